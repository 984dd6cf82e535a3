package org.kindling.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class NotebookCommandTest {
    @Test
    void missingJupyterSaysHowToInstallIt() {
        CliRun r = CliRun.of("notebook", "--install-only", "--jupyter", "/nonexistent/jupyter");
        assertEquals(1, r.code(), r.err());
        assertTrue(r.err().contains("apt-get install -y jupyter-notebook jupyter-nbconvert"), r.err());
    }

    @Test
    void badPortAndMissingFolderAreUsageErrors(@TempDir Path dir) {
        CliRun.assertUsageError("--port 0 is not a port", "notebook", "--port", "0");
        CliRun.assertUsageError("is not a folder", "notebook", "--dir", dir.resolve("missing").toString());
    }

    @Test
    void kernelGetsTheLaunchersJvmFlags() {
        var flags = NotebookCommand.kernelJvmFlags();
        assertTrue(flags.contains("--add-modules=jdk.incubator.vector"), flags.toString());
        assertTrue(flags.contains("--add-opens=java.base/java.nio=ALL-UNNAMED"), flags.toString());
        assertEquals("1", NotebookCommand.kernelEnv().get("OPENBLAS_NUM_THREADS"));
    }
}
