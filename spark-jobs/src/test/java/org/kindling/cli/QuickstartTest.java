package org.kindling.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The README's first command, shortened to a few steps. */
class QuickstartTest {
    @TempDir
    Path dir;

    @Test
    void runsThePipelineOnTheProjectsOwnSources() throws Exception {
        String before = System.getProperty("kindling.home");
        System.setProperty("kindling.home", Path.of("..").toAbsolutePath().normalize().toString());
        try {
            StringWriter out = new StringWriter();
            StringWriter err = new StringWriter();
            int code = Kindling.run(new PrintWriter(out, true), new PrintWriter(err, true), "quickstart", "--dir",
                    dir.resolve("qs").toString(), "--steps", "8");
            assertEquals(0, code, err.toString());
            assertTrue(out.toString().startsWith("public final class "), out.toString());
            assertTrue(err.toString().contains("3/3 a sample"), err.toString());
            assertTrue(Files.exists(dir.resolve("qs/data/manifest.json")));
            assertTrue(Files.exists(dir.resolve("qs/run/checkpoints/LATEST")));
            assertEquals(8, Files.readAllLines(dir.resolve("qs/run/metrics.jsonl")).size());
            Files.writeString(dir.resolve("other.txt"), "not a quickstart");
            int refused = Kindling.run(new PrintWriter(new StringWriter()), new PrintWriter(err, true), "quickstart", "--dir",
                    dir.toString(), "--steps", "1");
            assertEquals(2, refused, "a directory with other files is refused");
        } finally {
            if (before == null) {
                System.clearProperty("kindling.home");
            } else {
                System.setProperty("kindling.home", before);
            }
        }
    }
}
