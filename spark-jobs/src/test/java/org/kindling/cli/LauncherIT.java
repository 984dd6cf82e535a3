package org.kindling.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;

/** Runs the real launcher, {@code bin/kindling}, on the jars packaged by this build. */
class LauncherIT {
    private static final Path ROOT = Path.of("..").toAbsolutePath().normalize();

    record Result(int code, String out, String err) {
    }

    static Result launch(String... args) throws IOException, InterruptedException {
        List<String> cmd = new ArrayList<>();
        cmd.add(ROOT.resolve("bin/kindling").toString());
        cmd.addAll(List.of(args));
        Path out = Files.createTempFile("kindling-out", ".txt");
        Path err = Files.createTempFile("kindling-err", ".txt");
        try {
            Process p = new ProcessBuilder(cmd).redirectOutput(out.toFile()).redirectError(err.toFile()).start();
            if (!p.waitFor(120, TimeUnit.SECONDS)) {
                p.destroyForcibly();
                throw new AssertionError("bin/kindling " + String.join(" ", args) + " did not finish in 120 s");
            }
            return new Result(p.exitValue(), Files.readString(out, StandardCharsets.UTF_8),
                    Files.readString(err, StandardCharsets.UTF_8));
        } finally {
            Files.deleteIfExists(out);
            Files.deleteIfExists(err);
        }
    }

    @Test
    void versionRunsFromThePackagedJars() throws Exception {
        Result r = launch("version");
        assertEquals(0, r.code(), r.err());
        assertTrue(r.out().startsWith("kindling " + BuildInfo.version()), r.out());
        assertTrue(!r.err().contains("building"), "the launcher must not rebuild what this build packaged: " + r.err());
    }

    @Test
    void benchGemmPrintsOneJsonLineOnStdout() throws Exception {
        Result r = launch("bench", "gemm", "--m", "96", "--n", "80", "--k", "64", "--seconds", "0.05", "--json");
        assertEquals(0, r.code(), r.err());
        String[] lines = r.out().strip().split("\n");
        assertEquals(1, lines.length, r.out());
        JsonNode row = new ObjectMapper().readTree(lines[0]);
        assertEquals("gemm", row.get("bench").asText());
        assertTrue(row.get("gflops").asDouble() > 0, lines[0]);
    }

    @Test
    void sparkIsOnTheLaunchClasspath() throws Exception {
        Result r = launch("version");
        assertTrue(r.out().contains("spark " + BuildInfo.sparkVersion() + " (built against"), r.out());
    }
}
