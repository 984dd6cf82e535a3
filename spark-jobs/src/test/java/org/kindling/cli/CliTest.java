package org.kindling.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;

class CliTest {
    record Result(int code, String out, String err) {
    }

    static Result run(String... args) {
        StringWriter out = new StringWriter();
        StringWriter err = new StringWriter();
        int code = Kindling.run(new PrintWriter(out, true), new PrintWriter(err, true), args);
        return new Result(code, out.toString(), err.toString());
    }

    @Test
    void versionNamesTheBuildAndTheGemm() {
        Result r = run("version");
        assertEquals(0, r.code(), r.err());
        assertTrue(r.out().startsWith("kindling " + BuildInfo.version()), r.out());
        assertTrue(r.out().contains("cpu gemm "), r.out());
        assertTrue(r.out().contains("spark " + BuildInfo.sparkVersion() + " (built against"), "Spark is on the test classpath: " + r.out());
        assertEquals("kindling " + BuildInfo.version(), run("--version").out().trim());
    }

    @Test
    void everyCommandHasHelp() {
        for (String[] cmd : new String[][] {{"--help"}, {"version", "--help"}, {"bench", "--help"}, {"bench", "gemm", "--help"}}) {
            Result r = run(cmd);
            assertEquals(0, r.code(), String.join(" ", cmd));
            assertTrue(r.out().contains("Usage:"), r.out());
        }
        assertTrue(run("--help").out().contains("bench"));
    }

    @Test
    void benchGemmJsonHasExactlyTheIssueFields() throws Exception {
        Result r = run("bench", "gemm", "--m", "67", "--n", "45", "--k", "33", "--threads", "2", "--seconds", "0.05", "--json");
        assertEquals(0, r.code(), r.err());
        String[] lines = r.out().strip().split("\n");
        assertEquals(1, lines.length, r.out());
        JsonNode row = new ObjectMapper().readTree(lines[0]);
        List<String> names = new ArrayList<>();
        row.fieldNames().forEachRemaining(names::add);
        assertEquals(List.of("bench", "m", "n", "k", "threads", "gflops", "naive_gflops", "impl"), names);
        assertEquals("gemm", row.get("bench").asText());
        assertEquals(67, row.get("m").asInt());
        assertEquals(45, row.get("n").asInt());
        assertEquals(33, row.get("k").asInt());
        assertEquals(2, row.get("threads").asInt());
        assertTrue(row.get("gflops").asDouble() > 0);
        assertTrue(row.get("naive_gflops").asDouble() > 0);
        assertTrue(List.of("openblas", "native", "vector", "java").contains(row.get("impl").asText()));
        assertTrue(r.err().contains("GFLOP/s"), "the human-readable line goes to stderr");
    }

    @Test
    void humanOutputOnlyWithoutJson() {
        Result r = run("bench", "gemm", "--m", "8", "--n", "8", "--k", "8", "--seconds", "0.01");
        assertEquals(0, r.code(), r.err());
        assertEquals("", r.out());
        assertTrue(r.err().contains("gemm 8x8x8"), r.err());
    }

    @Test
    void badOptionsAreUsageErrorsThatNameTheOption() {
        Result r = run("bench", "gemm", "--m", "0");
        assertEquals(2, r.code());
        assertTrue(r.err().contains("--m must be at least 1"), r.err());
        Result t = run("bench", "gemm", "--threads", "0");
        assertEquals(2, t.code());
        assertTrue(t.err().contains("--threads"), t.err());
        Result u = run("bench", "gemm", "--bogus");
        assertEquals(2, u.code());
        assertTrue(u.err().contains("--bogus"), u.err());
        assertEquals(2, run("bench").code());
        assertEquals(2, run().code());
    }
}
