package org.kindling.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.File;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.net.URL;
import java.net.URLClassLoader;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;

/**
 * The device check bundle's command line ({@link DeviceCheck}) runs with Spark, Hadoop, Arrow and Scala absent: its
 * commands are loaded and run in a class loader that refuses those packages, as on a GPU machine with only the bundle.
 */
class DeviceCheckTest {
    private static final List<String> HIDDEN = List.of("org.apache.spark.", "org.apache.hadoop.", "org.apache.arrow.", "scala.",
            "org.slf4j.bridge.");

    /** The test's classpath, minus the packages a device check bundle does not carry. */
    private static final class WithoutSpark extends URLClassLoader {
        WithoutSpark() throws Exception {
            super(classpath(), ClassLoader.getPlatformClassLoader());
        }

        private static URL[] classpath() throws Exception {
            List<URL> urls = new ArrayList<>();
            for (String entry : System.getProperty("java.class.path").split(File.pathSeparator)) {
                urls.add(new File(entry).toURI().toURL());
            }
            return urls.toArray(URL[]::new);
        }

        @Override
        protected Class<?> loadClass(String name, boolean resolve) throws ClassNotFoundException {
            for (String prefix : HIDDEN) {
                if (name.startsWith(prefix)) {
                    throw new ClassNotFoundException(name + " is not in the device check bundle");
                }
            }
            return super.loadClass(name, resolve);
        }
    }

    /** Runs DeviceCheck in the loader without Spark: exit code, stdout, stderr. */
    private static CliRun runWithoutSpark(String... args) throws Exception {
        try (WithoutSpark loader = new WithoutSpark()) {
            Class<?> main = loader.loadClass(DeviceCheck.class.getName());
            StringWriter out = new StringWriter();
            StringWriter err = new StringWriter();
            int code = (int) main.getMethod("run", PrintWriter.class, PrintWriter.class, String[].class)
                    .invoke(null, new PrintWriter(out, true), new PrintWriter(err, true), args);
            return new CliRun(code, out.toString(), err.toString());
        }
    }

    @Test
    void theLoaderReallyHidesSpark() {
        assertThrows(ClassNotFoundException.class, () -> {
            try (WithoutSpark loader = new WithoutSpark()) {
                loader.loadClass("org.apache.spark.SparkContext");
            }
        });
    }

    @Test
    void versionAndTheDeviceBenchesRunWithoutSpark() throws Exception {
        CliRun version = runWithoutSpark("version");
        assertEquals(0, version.code(), version.err());
        assertTrue(version.out().contains("devices cpu"), version.out());

        CliRun gemm = runWithoutSpark("bench", "gemm", "--m", "9", "--n", "7", "--k", "5", "--seconds", "0.01", "--device", "cpu:1",
                "--json");
        JsonNode row = gemm.rows(null).get(0);
        assertEquals("gemm", row.get("bench").asText());
        assertEquals(9, row.get("m").asInt());

        CliRun attention = runWithoutSpark("bench", "attention", "--seq", "16", "--heads", "2", "--head-dim", "8", "--reps", "1",
                "--device", "cpu:1", "--json");
        assertEquals("attention", attention.rows(null).get(0).get("bench").asText());

        CliRun train = runWithoutSpark("bench", "train", "--layers", "1", "--d-model", "16", "--heads", "2", "--vocab", "32",
                "--seq", "8", "--batch", "2", "--steps", "1", "--warmup", "1", "--device", "cpu:1", "--json");
        JsonNode trained = new ObjectMapper().readTree(train.out().strip().split("\n")[0]);
        assertEquals(0, train.code(), train.err());
        assertEquals("train", trained.get("bench").asText());
        assertTrue(trained.get("tokens_per_s").asDouble() > 0, train.out());
    }

    @Test
    void aBenchMustBeNamedAndSparkCommandsAreNotThere() throws Exception {
        CliRun bench = runWithoutSpark("bench");
        assertEquals(2, bench.code(), bench.err());
        assertTrue(bench.err().contains("name a benchmark"), bench.err());
        CliRun train = runWithoutSpark("train", "--config", "tiny");
        assertEquals(2, train.code(), train.err());
        assertTrue(train.err().contains("Unmatched argument"), train.err());
    }
}
