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

    /**
     * The shaded jar under SparkSubmit (what {@code spark-submit --class org.kindling.cli.Kindling}
     * runs) with Spark's jars beside it: prepare on local[2], then train 2 workers on local-cluster,
     * whose executors are separate JVMs, so the ring and the coordinator cross process boundaries.
     */
    @Test
    void sparkSubmitTrainsTwoWorkersInSeparateExecutorJvmsFromTheShadedJar() throws Exception {
        Path jar;
        try (var files = Files.list(ROOT.resolve("spark-jobs/target"))) {
            jar = files.filter(f -> f.getFileName().toString().matches("kindling-spark-jobs-.*-all\\.jar")).findFirst().orElseThrow();
        }
        String sparkJars = Files.readString(ROOT.resolve("spark-jobs/target/classpath-provided.txt")).strip();
        java.util.Properties build = new java.util.Properties();
        try (var in = Files.newInputStream(ROOT.resolve("spark-jobs/target/classes/org/kindling/cli/build.properties"))) {
            build.load(in);
        }
        String flags = build.getProperty("jvm.flags").strip();
        Path work = Files.createTempDirectory("kindling-submit");
        Path corpus = Files.createDirectories(work.resolve("corpus"));
        Files.writeString(corpus.resolve("a.txt"), "the cat sat on the mat. the dog sat on the log.\n".repeat(60));
        Result prep = submit(jar, sparkJars, flags, "local[2]", List.of(), "prepare", "--input", corpus.toString(), "--output",
                work.resolve("data").toString(), "--line-docs", "--vocab-size", "300", "--max-len", "64");
        assertEquals(0, prep.code(), prep.err());
        Path run = work.resolve("run");
        Result train = submit(jar, sparkJars, flags, "local-cluster[2,1,1024]",
                List.of("--conf", "spark.executor.extraClassPath=" + jar + ":" + sparkJars, "--conf", "spark.executor.extraJavaOptions=" + flags),
                "train", "--config", "tiny", "--data", work.resolve("data").toString(), "--run", run.toString(), "--workers", "2",
                "--set", "max_steps=4", "--set", "warmup_steps=1", "--set", "batch_tokens=512", "--set", "log_interval=1");
        assertEquals(0, train.code(), train.err());
        assertTrue(train.err().contains("step 4/4 | loss"), train.err());
        assertEquals(4, Files.readAllLines(run.resolve("metrics.jsonl")).size());
        JsonNode state = new ObjectMapper().readTree(run.resolve("checkpoints/step-4/state.json").toFile());
        assertEquals(2, state.get("data_positions").size(), state.toString());
    }

    private static Result submit(Path jar, String sparkJars, String flags, String master, List<String> conf, String... args)
            throws IOException, InterruptedException {
        List<String> cmd = new ArrayList<>();
        cmd.add(Path.of(System.getProperty("java.home"), "bin", "java").toString());
        cmd.addAll(List.of(flags.split("\\s+")));
        Path home = Files.createTempDirectory("spark-test-home");
        // local-cluster mode without a Spark installation (STACK.md): Spark's test switches.
        cmd.addAll(List.of("-Dspark.testing=true", "-Dspark.test.home=" + home, "-cp", jar + ":" + sparkJars,
                "org.apache.spark.deploy.SparkSubmit", "--master", master));
        cmd.addAll(conf);
        cmd.addAll(List.of("--class", "org.kindling.cli.Kindling", jar.toString()));
        cmd.addAll(List.of(args));
        Path out = Files.createTempFile("submit-out", ".txt");
        Path err = Files.createTempFile("submit-err", ".txt");
        ProcessBuilder pb = new ProcessBuilder(cmd).redirectOutput(out.toFile()).redirectError(err.toFile());
        pb.environment().put("SPARK_TESTING", "1");
        pb.environment().put("SPARK_SCALA_VERSION", "2.13");
        pb.environment().put("SPARK_LOCAL_IP", "127.0.0.1");
        Process p = pb.start();
        if (!p.waitFor(180, TimeUnit.SECONDS)) {
            p.destroyForcibly();
            throw new AssertionError("spark-submit " + String.join(" ", args) + " did not finish in 180 s: " + Files.readString(err));
        }
        return new Result(p.exitValue(), Files.readString(out), Files.readString(err));
    }

    @Test
    void sparkIsOnTheLaunchClasspath() throws Exception {
        Result r = launch("version");
        assertTrue(r.out().contains("spark " + BuildInfo.sparkVersion() + " (built against"), r.out());
    }
}
