package org.kindling.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** {@code kindling report}: the page and charts where asked (RUN/report by default), its --json line, errors naming the file. */
class ReportCommandTest {
    @TempDir
    Path dir;

    private Path run(String name, int steps, String extra) throws Exception {
        Path run = dir.resolve(name);
        Files.createDirectories(run);
        StringBuilder sb = new StringBuilder();
        for (int s = 1; s <= steps; s++) {
            sb.append(String.format(java.util.Locale.ROOT, "{\"step\":%d,\"loss\":%.4f,\"lr\":1.0e-03,\"grad_norm\":0.5,\"tokens_per_s\":%d%s}%n",
                    s, 7.0 - 0.1 * s, 1000 * s, extra));
        }
        Files.writeString(run.resolve("metrics.jsonl"), sb.toString());
        return run;
    }

    @Test
    void writesTheReportAndPrintsItsJsonLine() throws Exception {
        Path a = run("a", 6, ",\"moe_balance_loss\":1.5");
        Path b = run("b", 4, "");
        CliRun r = CliRun.of("report", "--run", a.toString(), "--compare", b.toString(), "--json");
        List<JsonNode> rows = r.rows(List.of("report", "charts", "runs"));
        assertEquals(1, rows.size());
        assertEquals(5, rows.get(0).get("charts").asInt());
        assertEquals(2, rows.get(0).get("runs").asInt());
        assertTrue(rows.get(0).get("report").asText().endsWith(a.resolve("report/report.html").toString()), rows.get(0).toString());
        for (String c : List.of("loss", "lr", "grad_norm", "tokens_per_s", "moe_balance_loss")) {
            assertTrue(Files.size(a.resolve("report/" + c + ".png")) > 0 && Files.size(a.resolve("report/" + c + ".svg")) > 0, c);
        }
        assertTrue(Files.readString(a.resolve("report/report.html")).contains("<b>b</b>"));

        Path out = dir.resolve("elsewhere");
        CliRun plain = CliRun.of("report", "--run", b.toString(), "--out", out.toString());
        assertEquals(0, plain.code(), plain.err());
        assertEquals("", plain.out(), "without --json nothing goes to stdout");
        assertTrue(plain.err().contains("4 charts of 1 run:"), plain.err());
        assertTrue(Files.exists(out.resolve("report.html")));
    }

    @Test
    void aRunWithoutMetricsOrWithABadLineFailsNamingIt() throws Exception {
        Path none = dir.resolve("none");
        Files.createDirectories(none);
        CliRun r = CliRun.of("report", "--run", none.toString());
        assertEquals(1, r.code());
        assertTrue(r.err().contains("kindling report: ") && r.err().contains(none.resolve("metrics.jsonl").toString() + " is missing"), r.err());
        Path bad = run("bad", 3, "");
        Files.writeString(bad.resolve("metrics.jsonl"), "{\"step\":4,\"loss\":\"x\"}\n", java.nio.file.StandardOpenOption.APPEND);
        CliRun b = CliRun.of("report", "--run", bad.toString());
        assertEquals(1, b.code());
        assertTrue(b.err().contains("metrics.jsonl line 4: field loss must be a number or null"), b.err());
    }
}
