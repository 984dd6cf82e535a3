package org.kindling.api;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicReference;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.spark.JobExecutionStatus;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.kindling.models.train.StepResult;
import org.kindling.train.TrainingFailedException;
import org.kindling.train.TrainingInterruptedException;

/**
 * The Java API as a notebook uses it: a DataFrame of texts prepared, trained, inspected, sampled,
 * evaluated and exported; and the caller's SparkSession still running jobs after a failed and an
 * interrupted training.
 */
class KindlingApiTest {
    static SparkSession spark;
    @TempDir
    static Path dir;
    static PreparedData data;
    static String prepareLines;

    @BeforeAll
    static void start() throws Exception {
        spark = SparkSession.builder().master("local[2]").appName("api-test").config("spark.ui.enabled", "false")
                .config("spark.sql.shuffle.partitions", "4").getOrCreate();
        List<Row> rows = new ArrayList<>();
        for (int i = 0; i < 60; i++) {
            rows.add(RowFactory.create("the cat sat on the mat number " + i + ". the dog sat on the log."));
        }
        rows.add(RowFactory.create((Object) null));
        Dataset<Row> df = spark.createDataFrame(rows, new StructType().add("text", DataTypes.StringType));
        ByteArrayOutputStream progress = new ByteArrayOutputStream();
        data = KindlingApi.prepare(spark).texts(df, "text").vocabSize(300).maxLen(64).output(dir.resolve("data").toString())
                .progress(new PrintStream(progress, true, StandardCharsets.UTF_8)).run();
        prepareLines = progress.toString(StandardCharsets.UTF_8);
    }

    @AfterAll
    static void stop() {
        spark.stop();
    }

    private static TrainBuilder tiny(String run, int steps) {
        return KindlingApi.train(spark).preset("tiny").data(data).runDir(dir.resolve(run).toString()).set("max_steps", steps)
                .set("batch_tokens", 512).set("warmup_steps", 1).set("log_interval", 1).set("checkpoint_interval", 2);
    }

    @Test
    void preparingADataFrameWritesItsProgressToTheGivenStream() {
        String[] lines = prepareLines.strip().split("\n");
        int parts = spark.sparkContext().defaultParallelism();
        long bytes = 0;
        for (int i = 0; i < 60; i++) {
            bytes += ("the cat sat on the mat number " + i + ". the dog sat on the log.").length();
        }
        assertEquals(bytes, data.inputBytes());
        assertTrue(lines[lines.length - 1].matches("prepare: " + parts + "/" + parts + " partitions \\| 61 rows \\| "
                + String.format(java.util.Locale.ROOT, "%,d", bytes) + " bytes \\| [\\d.]+ MB/s \\| ETA 0m00s"), prepareLines);
    }

    @Test
    void preparesTrainsSamplesEvaluatesAndExportsFromADataFrame() throws Exception {
        assertEquals(60, data.documents());
        assertEquals(1L, data.rejects().get("missing_field"), "the null row is a reject, not dropped silently");
        assertTrue(data.tokens() > 60 && data.vocabSize() <= 300 && !data.shards().isEmpty(), data.toString());

        ByteArrayOutputStream progress = new ByteArrayOutputStream();
        TrainedRun run = tiny("run", 4).evalData(data).set("eval_interval", 3)
                .progress(new PrintStream(progress, true, StandardCharsets.UTF_8)).run();
        String lines = progress.toString(StandardCharsets.UTF_8);
        assertTrue(lines.contains("model: ") && lines.contains("step 2/4 | loss ") && lines.contains("step 4/4"), lines);
        assertTrue(lines.lines().filter(l -> l.contains(" | eval_loss ")).count() == 2 && lines.contains("step 3/4 | loss "), lines);
        assertEquals(4, run.finalStep());
        assertEquals("step-4", run.latestCheckpoint());
        assertEquals(List.of(1, 2, 3, 4), run.metrics().stream().map(MetricRow::step).toList());
        assertEquals(4, run.trainedSteps().size());
        assertEquals(run.trainedSteps().get(3).loss(), run.metrics().get(3).loss(), 1e-5);
        // Evaluated after steps 3 and 4 (the last), on the first eval_batches (default 4) batches that kindling eval reads.
        assertEquals(List.of(false, false, true, true), run.metrics().stream().map(m -> !Double.isNaN(m.evalLoss())).toList());
        double evalLoss = run.trainedSteps().get(3).metrics().get("eval_loss");
        assertEquals(evalLoss, run.metrics().get(3).evalLoss(), 1e-5);
        assertEquals(KindlingApi.evaluate(run).data(data).batchTokens(512).batches(4).run().loss(), evalLoss, 1e-5);
        assertEquals(Map.of(), run.metrics().get(3).layerMetrics(), "eval_loss is not a layer metric");
        Dataset<Row> frame = run.metricsFrame(spark);
        assertEquals(List.of("step", "loss", "lr", "grad_norm", "tokens_per_s", "eval_loss"), List.of(frame.columns()));
        assertTrue(frame.orderBy("step").first().isNullAt(5), "no eval loss at step 1");
        assertEquals(evalLoss, frame.orderBy(frame.col("step").desc()).first().getDouble(5), 1e-5);
        assertEquals(4, frame.count());
        assertEquals(run.metrics().get(0).loss(), frame.orderBy("step").first().getDouble(1), 1e-9);
        TrainedRun opened = KindlingApi.open(spark, run.runDir());
        assertEquals(run.metrics(), opened.metrics());
        assertEquals(List.of(), opened.trainedSteps());

        List<String> texts = KindlingApi.generate(run).prompt("the cat", "the dog").maxNewTokens(6).temperature(0).run();
        assertEquals(2, texts.size());
        assertEquals(texts.get(0), KindlingApi.generate(run).prompt("the cat").maxNewTokens(6).temperature(0).run().get(0),
                "a prompt continues in a batch as it would alone");
        InvalidOptionException bad = assertThrows(InvalidOptionException.class,
                () -> KindlingApi.generate(run).maxNewTokens(-1).run());
        assertEquals("maxNewTokens", bad.option());

        EvalResult eval = KindlingApi.evaluate(run).data(data).batches(2).run();
        assertTrue(eval.loss() > 0 && eval.loss() < Math.log(data.vocabSize()), eval.toString());
        assertEquals(Math.exp(eval.loss()), eval.perplexity(), 1e-9);
        assertEquals("step-4", eval.checkpoint());

        Path hf = dir.resolve("hf");
        assertEquals("step-2", KindlingApi.export(run).step(2).out(hf).run());
        assertTrue(Files.exists(hf.resolve("model.safetensors")) && Files.exists(hf.resolve("tokenizer.json")));
    }

    @Test
    void badOptionsNameTheOptionBeforeAnythingRuns() {
        InvalidOptionException e = assertThrows(InvalidOptionException.class,
                () -> KindlingApi.prepare(spark).texts(spark.range(3).toDF(), "text").output(dir.resolve("x").toString()).run());
        assertEquals("texts", e.option());
        assertTrue(e.getMessage().contains("no column \"text\"; its columns are [id]"), e.getMessage());
        e = assertThrows(InvalidOptionException.class, () -> KindlingApi.prepare(spark).input("a").output("b").maxLen(1).run());
        assertEquals("maxLen", e.option());
        e = assertThrows(InvalidOptionException.class, () -> KindlingApi.train(spark).preset("tiny").data(data).run());
        assertEquals("runDir", e.option());
        e = assertThrows(InvalidOptionException.class, () -> tiny("w", 1).workers(0).run());
        assertEquals("workers", e.option());
        e = assertThrows(InvalidOptionException.class, () -> tiny("lr", 1).set("lr", "fast").run());
        assertTrue(e.getMessage().contains("train.lr must be a number"), e.getMessage());
        e = assertThrows(InvalidOptionException.class, () -> tiny("ei", 1).evalData(data).set("eval_interval", -1).run());
        assertTrue(e.getMessage().contains("eval_interval must be >= 0"), e.getMessage());
        e = assertThrows(InvalidOptionException.class, () -> tiny("eb", 1).evalData(data).set("eval_batches", 0).run());
        assertTrue(e.getMessage().contains("eval_batches must be >= 1"), e.getMessage());
        e = assertThrows(InvalidOptionException.class, () -> tiny("ed", 1).evalData(dir.resolve("no-eval-data").toString()).run());
        assertEquals("evalData", e.option());
        assertTrue(e.getMessage().contains("has no manifest.json"), e.getMessage());
        assertEquals(3, spark.range(3).count());
    }

    @Test
    void evaluatingAMixtureOfExpertsWithDropoutChangesNoStepOrLayerMetric() throws Exception {
        // Router jitter and dropout draw from the step's seeds, and the routing counts cross the ring: an eval forward
        // between steps must leave all three alone, on 2 workers.
        List<StepResult> plain = moe("moe-plain").run().trainedSteps();
        List<StepResult> evaluated = moe("moe-eval").evalData(data).set("eval_interval", 1).run().trainedSteps();
        assertEquals(3, evaluated.size());
        for (int s = 0; s < 3; s++) {
            StepResult p = plain.get(s);
            StepResult e = evaluated.get(s);
            assertEquals(p.loss(), e.loss(), 0.0, "loss at step " + (s + 1));
            assertEquals(p.gradNorm(), e.gradNorm(), 0.0, "gradient norm at step " + (s + 1));
            assertTrue(p.metrics().containsKey("moe_balance_loss"), p.metrics().toString());
            Map<String, Double> layers = new java.util.TreeMap<>(e.metrics());
            assertTrue(Double.isFinite(layers.remove(StepResult.EVAL_LOSS)), e.metrics().toString());
            assertEquals(p.metrics(), layers, "layer metrics at step " + (s + 1));
        }
    }

    private static TrainBuilder moe(String run) {
        return tiny(run, 3).workers(2).set("channel_mixer", "moe").set("channel_mixer.experts", 4).set("channel_mixer.jitter", 0.01)
                .set("dropout", 0.1).set("checkpoint_interval", 0);
    }

    @Test
    void theSessionRunsJobsAfterAFailedTraining() throws Exception {
        InvalidOptionException e = assertThrows(InvalidOptionException.class,
                () -> tiny("nowhere", 2).data(dir.resolve("no-such-dataset").toString()).run());
        assertEquals("data", e.option());
        assertEquals(3, spark.range(3).count());

        // Shards that are not Arrow files: the tasks fail inside Spark, and the session is still fine after.
        Path broken = dir.resolve("broken");
        copy(Path.of(data.path()), broken);
        try (var shards = Files.list(broken.resolve("shards"))) {
            for (Path p : shards.toList()) {
                Files.writeString(p, "not an arrow file");
            }
        }
        assertThrows(TrainingFailedException.class, () -> tiny("broken-run", 2).data(broken.toString()).run());
        assertEquals(3, spark.range(3).count());
        assertEquals(0, spark.sparkContext().statusTracker().getActiveJobIds().length);
    }

    @Test
    void anInterruptCancelsTrainingAndTheSessionRunsJobsAfter() throws Exception {
        ByteArrayOutputStream progress = new ByteArrayOutputStream();
        PrintStream out = new PrintStream(progress, true, StandardCharsets.UTF_8);
        AtomicReference<Throwable> thrown = new AtomicReference<>();
        AtomicReference<Long> afterwards = new AtomicReference<>();
        Thread cell = new Thread(() -> {
            try {
                tiny("interrupted", 100_000).progress(out).run();
            } catch (Throwable t) {
                thrown.set(t);
            }
            // The same thread, as a notebook's next cell would be: the interrupt is consumed, Spark works.
            afterwards.set(spark.range(3).count());
        });
        cell.start();
        long deadline = System.nanoTime() + 120_000_000_000L;
        while (!progress.toString(StandardCharsets.UTF_8).contains("step 3/")) {
            assertTrue(System.nanoTime() < deadline && cell.isAlive(), "training did not reach step 3: " + progress);
            Thread.sleep(50);
        }
        cell.interrupt();
        cell.join(90_000);
        assertFalse(cell.isAlive(), "the interrupted training returned");
        TrainingInterruptedException e = assertInstanceOf(TrainingInterruptedException.class, thrown.get());
        assertEquals(3L, afterwards.get());
        Matcher m = Pattern.compile("group (kindling-train-[0-9a-f-]+)").matcher(e.getMessage());
        assertTrue(m.find(), e.getMessage());
        var tracker = spark.sparkContext().statusTracker();
        int[] jobs = tracker.getJobIdsForGroup(m.group(1));
        assertTrue(jobs.length > 0, "the run's jobs are in its group");
        for (int job : jobs) {
            assertTrue(tracker.getJobInfo(job).get().status() != JobExecutionStatus.RUNNING, "job " + job + " was cancelled");
        }
        assertEquals(0, tracker.getActiveJobIds().length);
        assertEquals(3, spark.range(3).count());
        TrainedRun resumed = KindlingApi.open(spark, dir.resolve("interrupted").toString());
        assertTrue(resumed.finalStep() >= 3, "the metrics and checkpoints up to the interrupt stay: " + resumed.finalStep());
    }

    /** The README's "Java API" example, compiled as it stands against this build, so it stays true. */
    @Test
    void theReadmeExampleCompiles() throws Exception {
        String readme = Files.readString(Path.of("..", "README.md"));
        int section = readme.indexOf("## Java API");
        assertTrue(section >= 0, "README has a Java API section");
        int from = readme.indexOf("```java\n", section) + "```java\n".length();
        String example = readme.substring(from, readme.indexOf("```", from));
        StringBuilder imports = new StringBuilder();
        StringBuilder body = new StringBuilder();
        for (String line : example.split("\n")) {
            (line.startsWith("import ") ? imports : body).append(line).append('\n');
        }
        Path src = dir.resolve("readme/ReadmeExample.java");
        Files.createDirectories(src.getParent());
        Files.writeString(src, imports + "class ReadmeExample {\n    static void example() throws Exception {\n" + body + "    }\n}\n");
        javax.tools.JavaCompiler javac = javax.tools.ToolProvider.getSystemJavaCompiler();
        ByteArrayOutputStream diagnostics = new ByteArrayOutputStream();
        String classpath = System.getProperty("surefire.test.class.path", System.getProperty("java.class.path"));
        int rc = javac.run(null, null, diagnostics, "-proc:none", "-classpath", classpath, "-d", src.getParent().toString(),
                src.toString());
        assertEquals(0, rc, diagnostics.toString(StandardCharsets.UTF_8));
    }

    private static void copy(Path from, Path to) throws Exception {
        try (var s = Files.walk(from)) {
            for (Path p : s.toList()) {
                Path q = to.resolve(from.relativize(p).toString());
                if (Files.isDirectory(p)) {
                    Files.createDirectories(q);
                } else {
                    Files.copy(p, q);
                }
            }
        }
    }
}
