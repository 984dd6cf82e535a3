package org.kindling.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.io.InputStream;
import java.net.InetAddress;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import org.apache.arrow.memory.RootAllocator;
import org.apache.spark.scheduler.SparkListener;
import org.apache.spark.scheduler.SparkListenerStageSubmitted;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.kindling.collective.LogCapture;
import org.kindling.collective.RunSecret;
import org.kindling.collective.Strangers;
import org.kindling.api.EvalResult;
import org.kindling.api.KindlingApi;
import org.kindling.data.BpeTokenizer;
import org.kindling.data.BpeTrainer;
import org.kindling.data.Shard;
import org.kindling.data.ShardWriter;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.RunConfig;
import org.kindling.models.pipeline.PipelinePolicy;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.io.Safetensors;
import org.kindling.models.train.StepResult;

/** Data-parallel training in a Spark barrier stage on local[2]: 2 workers vs 1, a failed task, a failed run. */
class DistributedTrainTest {
    static final int LEN = 32;
    static final int DOCS_PER_BATCH = 3;
    static final ModelConfig MODEL = ModelConfig.gpt(64, 32, 2, 4, 2, LEN, 4, 0, 0.02, 1e-5);
    static SparkSession spark;
    @TempDir
    static Path dir;
    static Path data;
    /** Other documents with the same tokenizer, to evaluate on. */
    static Path evalData;
    /** A real tokenizer, so that a run's tokenizer.json can be checked against its datasets' (the ids stay below 64). */
    static final BpeTokenizer TOKENIZER = BpeTrainer.train(Map.of(), 257, List.of(BpeTokenizer.END_OF_TEXT));

    @BeforeAll
    static void start() throws IOException {
        spark = session("local[2]", "distributed-train-test");
        data = dir.resolve("data");
        writeDataset(data, 16);
        evalData = dir.resolve("eval-data");
        writeDataset(evalData, 4, 11, TOKENIZER);
    }

    /** A local session for barrier-stage training tests: short timeouts, small gradient buckets. */
    static SparkSession session(String master, String app) {
        return SparkSession.builder().master(master).appName(app)
                .config("spark.ui.enabled", "false")
                .config("spark.scheduler.barrier.maxConcurrentTasksCheck.interval", "1s")
                .config("spark.scheduler.barrier.maxConcurrentTasksCheck.maxFailures", "3")
                .config(TrainJob.RENDEZVOUS_TIMEOUT, "60")
                .config(TrainJob.COLLECTIVE_TIMEOUT, "60")
                .config(TrainJob.BUCKET_BYTES, "8192")
                .getOrCreate();
    }

    @AfterAll
    static void stop() {
        spark.stop();
    }

    /**
     * A dataset whose record batches hold exactly {@link #DOCS_PER_BATCH} documents of {@link #LEN}
     * tokens: with a budget of one record batch per worker, 2 workers read together exactly what
     * 1 worker reads with twice the budget.
     */
    static void writeDataset(Path out, int batches) throws IOException {
        writeDataset(out, batches, 3, TOKENIZER);
    }

    /** As {@link #writeDataset(Path, int)}, with documents drawn from {@code seed}, made with {@code tokenizer}. */
    static void writeDataset(Path out, int batches, long seed, BpeTokenizer tokenizer) throws IOException {
        Files.createDirectories(out);
        SplittableRandom r = new SplittableRandom(seed);
        Shard.Info info = new Shard.Info(tokenizer.sha256(), 64, "{\"<|endoftext|>\":63}", 1, LEN);
        try (RootAllocator allocator = new RootAllocator();
             ShardWriter w = new ShardWriter(Files.newOutputStream(out.resolve("shard-0.arrow")), info, allocator, DOCS_PER_BATCH)) {
            for (int d = 0; d < batches * DOCS_PER_BATCH; d++) {
                int[] doc = new int[LEN];
                int a = r.nextInt(64);
                for (int i = 0; i < LEN; i++) {
                    doc[i] = (a + 7 * i + (i % 3 == 0 ? r.nextInt(4) : 0)) % 64; // learnable: mostly an arithmetic walk
                }
                w.write(d, doc, 0, LEN);
            }
        }
        Files.writeString(out.resolve("manifest.json"), "{\"format_version\":1,\"shards\":[{\"path\":\"shard-0.arrow\"}]}");
        Files.writeString(out.resolve("tokenizer.json"), tokenizer.toJson());
    }

    static RunConfig config(int batchTokens) {
        return new RunConfig(MODEL, new TrainConfig(7, 3e-3, 3e-4, 2, 6, 0.1, 0.9, 0.95, 1e-8, 1.0, 1, batchTokens, 1, 2, 5));
    }

    static float[] weights(Path run, int step) throws IOException {
        try (InputStream in = Files.newInputStream(run.resolve("checkpoints/step-" + step + "/model.safetensors"))) {
            var tensors = Safetensors.read(in, run.toString()).tensors();
            int n = tensors.values().stream().mapToInt(t -> t.data().length).sum();
            float[] all = new float[n];
            int off = 0;
            for (var t : tensors.values()) {
                System.arraycopy(t.data(), 0, all, off, t.data().length);
                off += t.data().length;
            }
            return all;
        }
    }

    @Test
    void twoWorkersMatchOneWorkerWithTheirCombinedBatchAndSurviveAFailedTask() throws IOException {
        Path one = dir.resolve("one");
        Path two = dir.resolve("two");
        Path faulty = dir.resolve("faulty");
        List<StepResult> single;
        try (LogCapture logs = new LogCapture()) {
            // One task on local[2]'s two cores: two single-thread replicas, each on half of every batch.
            single = TrainJob.run(spark, one.toString(), data.toString(), config(2 * DOCS_PER_BATCH * LEN), 1);
            assertTrue(logs.lines().stream().anyMatch(l -> l.contains("rank 0: 2 replica(s) on cpu:1 each")), logs.lines().toString());
        }
        List<StepResult> pair;
        try (LogCapture logs = new LogCapture()) {
            pair = TrainJob.run(spark, two.toString(), data.toString(), config(DOCS_PER_BATCH * LEN), 2);
            assertTrue(logs.lines().stream().anyMatch(l -> l.contains("rank 1: 1 replica(s) on cpu:1 each")), logs.lines().toString());
        }
        assertEquals(6, single.size());
        assertEquals(6, pair.size());
        float[] w1 = weights(one, 6);
        float[] w2 = weights(two, 6);
        double maxDiff = 0;
        for (int i = 0; i < w1.length; i++) {
            maxDiff = Math.max(maxDiff, Math.abs(w1[i] - w2[i]));
        }
        // Same tokens, same mean: only the order of fp32 sums differs (and Adam's m/√v amplifies it where a gradient is
        // near zero). Stated tolerance: 1e-4 absolute, under 1 % of the 6 × 3e-3 = 1.8e-2 a weight can move in this run.
        assertTrue(maxDiff < 1e-4, "max weight difference " + maxDiff);
        for (int s = 0; s < 6; s++) {
            assertEquals(single.get(s).loss(), pair.get(s).loss(), 1e-5, "loss at step " + (s + 1));
            assertEquals(single.get(s).tokens(), pair.get(s).tokens(), "tokens of all workers at step " + (s + 1));
        }
        assertEquals(6, Files.readAllLines(two.resolve("metrics.jsonl")).size());
        TfEvents.assertMatchesMetrics(two);

        // spark.kindling.replicasPerTask=1: one model on both threads, equal up to the order of fp32 sums.
        Path flat = dir.resolve("one-replica");
        spark.conf().set(TrainJob.REPLICAS_PER_TASK, "1");
        try (LogCapture logs = new LogCapture()) {
            TrainJob.run(spark, flat.toString(), data.toString(), config(2 * DOCS_PER_BATCH * LEN), 1);
            assertTrue(logs.lines().stream().anyMatch(l -> l.contains("rank 0: 1 replica(s) on cpu:2 each")), logs.lines().toString());
            spark.conf().set(TrainJob.REPLICAS_PER_TASK, "0");
            IllegalArgumentException bad = assertThrows(IllegalArgumentException.class, () -> TrainJob.run(spark,
                    dir.resolve("no-replicas").toString(), data.toString(), config(2 * DOCS_PER_BATCH * LEN), 1));
            assertEquals(TrainJob.REPLICAS_PER_TASK + " must be a whole number >= 1, got \"0\"", bad.getMessage());
        } finally {
            spark.conf().unset(TrainJob.REPLICAS_PER_TASK);
        }
        float[] wFlat = weights(flat, 6);
        double flatDiff = 0;
        for (int i = 0; i < w1.length; i++) {
            flatDiff = Math.max(flatDiff, Math.abs(w1[i] - wFlat[i]));
        }
        assertTrue(flatDiff < 1e-4, "1 replica vs 2 in one task: max weight difference " + flatDiff);
        assertTrue(Files.readString(two.resolve("checkpoints/step-6/state.json")).contains("\"data_positions\" : [ "),
                "the checkpoint records each worker's data position");

        // Rank 1 fails after step 3 in the first stage attempt; the retried stage resumes from step-2 and ends where `two` did.
        List<StepResult> retried;
        try (LogCapture logs = new LogCapture()) {
            // It evaluates after every step (eval_interval defaults to log_interval, 1 here): that must change no bit of training.
            retried = TrainJob.run(spark, faulty.toString(), data.toString(), evalData.toString(), config(DOCS_PER_BATCH * LEN), 2,
                    new TrainJob.Fault(1, 3, false));
            List<String> resumed = logs.lines().stream().filter(l -> l.contains("resumes from")).toList();
            assertEquals(1, resumed.size(), resumed.toString());
            assertTrue(resumed.get(0).matches("INFO stage attempt 1 resumes from checkpoint step-2 after stage attempt 0 lost rank 1 "
                    + "\\([^)]+\\): IllegalStateException: injected test fault: rank 1 fails after step 3 in stage attempt 0"), resumed.get(0));
        }
        assertEquals(6, retried.get(retried.size() - 1).step());
        assertArrayEquals(w2, weights(faulty, 6), "a retried stage with evaluations must end bit-identical to an uninterrupted "
                + "run without");
        List<String> metrics = Files.readAllLines(faulty.resolve("metrics.jsonl"));
        assertEquals(6, metrics.size(), "steps redone after the retry replace the failed attempt's: " + metrics);
        assertEquals(Files.readAllLines(two.resolve("metrics.jsonl")).stream().map(DistributedTrainTest::lossOnly).toList(),
                metrics.stream().map(DistributedTrainTest::lossOnly).toList(), "the same training losses with and without eval");
        assertTrue(metrics.stream().allMatch(l -> l.contains(",\"eval_loss\":")), metrics.toString());
        assertTrue(retried.stream().allMatch(r -> r.metrics().keySet().equals(java.util.Set.of(StepResult.EVAL_LOSS))),
                "the eval forward adds no layer metric: " + retried);
        TfEvents.assertMatchesMetrics(faulty);

        // Resuming with another number of workers is refused with a clear error.
        Exception e = assertThrows(Exception.class, () -> TrainJob.run(spark, two.toString(), data.toString(),
                new RunConfig(MODEL, new TrainConfig(7, 3e-3, 3e-4, 2, 8, 0.1, 0.9, 0.95, 1e-8, 1.0, 1, 2 * DOCS_PER_BATCH * LEN, 1,
                        2, 5)), 1));
        assertTrue(rootMessage(e).contains("was written by 2 worker(s)"), rootMessage(e));
    }

    /** {@link #config} evaluating after every 4th step and the last (4 and 6), on up to {@code batches} batches per worker. */
    static RunConfig evalConfig(int batchTokens, int batches) {
        RunConfig c = config(batchTokens);
        return new RunConfig(c.model(), c.train().withEval(4, batches));
    }

    @Test
    void evalLossIsTheCheckpointsLossOnTheEvalDataWithOneOrTwoWorkers() throws IOException {
        Path one = dir.resolve("eval-one");
        Path two = dir.resolve("eval-two");
        // 100 batches: each worker reads its whole slice, so both runs evaluate every eval document once.
        List<StepResult> single = TrainJob.run(spark, one.toString(), data.toString(), evalData.toString(),
                evalConfig(2 * DOCS_PER_BATCH * LEN, 100), 1, TrainJob.Fault.NONE);
        List<StepResult> pair = TrainJob.run(spark, two.toString(), data.toString(), evalData.toString(),
                evalConfig(DOCS_PER_BATCH * LEN, 100), 2, TrainJob.Fault.NONE);
        for (int s = 1; s <= 6; s++) {
            boolean evaluated = s == 4 || s == 6;
            assertEquals(evaluated, single.get(s - 1).metrics().containsKey(StepResult.EVAL_LOSS), "step " + s + " of 1 worker");
            assertEquals(evaluated, pair.get(s - 1).metrics().containsKey(StepResult.EVAL_LOSS), "step " + s + " of 2 workers");
        }
        for (int step : new int[] {4, 6}) {
            double pairLoss = pair.get(step - 1).metrics().get(StepResult.EVAL_LOSS);
            double singleLoss = single.get(step - 1).metrics().get(StepResult.EVAL_LOSS);
            // The two runs' weights differ only in the order of fp32 sums (see the test above): so do their eval losses.
            assertEquals(singleLoss, pairLoss, 1e-5, "eval loss at step " + step + ", 1 worker vs 2");
            EvalResult ofPair = KindlingApi.evaluate(two.toString()).data(evalData.toString()).step(step)
                    .batchTokens(DOCS_PER_BATCH * LEN).run();
            assertEquals(4 * DOCS_PER_BATCH * (LEN - 1), ofPair.tokens(), "kindling eval predicts every eval token");
            assertEquals(ofPair.loss(), pairLoss, 1e-5, "eval loss at step " + step + " vs kindling eval of step-" + step);
            EvalResult ofSingle = KindlingApi.evaluate(one.toString()).data(evalData.toString()).step(step).run();
            assertEquals(ofSingle.loss(), singleLoss, 1e-5, "1 worker's eval loss at step " + step + " vs kindling eval");
            assertTrue(pairLoss > 0 && pairLoss < Math.log(64), "eval loss " + pairLoss);
        }
        List<String> lines = Files.readAllLines(two.resolve("metrics.jsonl"));
        assertEquals(6, lines.size());
        for (int s = 1; s <= 6; s++) {
            assertEquals(s == 4 || s == 6, lines.get(s - 1).contains(",\"eval_loss\":"), lines.get(s - 1));
        }
        TfEvents.assertMatchesMetrics(two);
    }

    @Test
    void evalDataWithAnotherTokenizerIsRefusedNamingTheOption() throws IOException {
        Path other = dir.resolve("eval-other-tokenizer");
        writeDataset(other, 2, 5, BpeTrainer.train(Map.of(), 258, List.of(BpeTokenizer.END_OF_TEXT, "<|pad|>")));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> TrainJob.run(spark,
                dir.resolve("eval-refused").toString(), data.toString(), other.toString(), config(DOCS_PER_BATCH * LEN), 2,
                TrainJob.Fault.NONE));
        assertTrue(e.getMessage().startsWith("--eval-data " + other + " was tokenized with another tokenizer than the run's "),
                e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> TrainJob.run(spark, dir.resolve("eval-missing").toString(),
                data.toString(), dir.resolve("nothing-here").toString(), config(DOCS_PER_BATCH * LEN), 2, TrainJob.Fault.NONE));
        assertTrue(e.getMessage().startsWith("--eval-data ") && e.getMessage().contains("has no manifest.json"), e.getMessage());
    }

    @Test
    void strangersFloodingTheCoordinatorAndARingPortDoNotDisturbARun() throws Exception {
        Path two = dir.resolve("undisturbed");
        TrainJob.run(spark, two.toString(), data.toString(), config(DOCS_PER_BATCH * LEN), 2);
        Path flooded = dir.resolve("flooded");
        ExecutorService flood = Executors.newFixedThreadPool(2);
        try (LogCapture logs = new LogCapture()) {
            // Rank 0 comes 3 s late, so rank 1's ring port is open (and flooded) before the ring forms.
            Future<List<StepResult>> run = flood.submit(() -> TrainJob.run(spark, flooded.toString(), data.toString(),
                    config(DOCS_PER_BATCH * LEN), 2, TrainJob.Fault.late(0, 3_000)));
            // Both listen on the host Spark advertises here (SPARK_LOCAL_IP is 127.0.0.1), never on every interface.
            Matcher coordinator = logs.await("coordinator listening on (.+):(\\d+)$", Duration.ofSeconds(60));
            assertTrue(InetAddress.getByName(coordinator.group(1)).isLoopbackAddress(), coordinator.group());
            Future<int[]> atCoordinator = flood.submit(() -> strangers(coordinator.group(1), Integer.parseInt(coordinator.group(2))));
            Matcher ring = logs.await("rank 1 ring listening on (.+):(\\d+)$", Duration.ofSeconds(60));
            assertTrue(InetAddress.getByName(ring.group(1)).isLoopbackAddress(), ring.group());
            int[] atRing = strangers(ring.group(1), Integer.parseInt(ring.group(2)));
            assertEquals(6, run.get(120, TimeUnit.SECONDS).size());
            int[] c = atCoordinator.get(60, TimeUnit.SECONDS);
            assertEquals(600, c[0], "all 600 strangers reached the coordinator");
            assertEquals(600, c[1], "and the coordinator hung up on every one");
            assertTrue(atRing[0] >= 300, "strangers reached the ring port while it was open: " + atRing[0]);
            assertEquals(atRing[0], atRing[1], "the ring hung up on every stranger that reached it");
            assertTrue(logs.lines().stream().anyMatch(l -> l.startsWith("WARNING rank 1 ring refused a connection from")));
            assertTrue(logs.lines().stream().noneMatch(l -> l.contains("resumes from")), "the stage ran once: " + logs.lines());
        } finally {
            flood.shutdownNow();
        }
        assertArrayEquals(weights(two, 6), weights(flooded, 6), "strangers must not change a single bit");
    }

    /** 300 idle and 300 garbage-sending connections to {@code host:port}; returns how many connected and how many the server hung up on. */
    static int[] strangers(String host, int port) throws IOException {
        try (Strangers s = new Strangers(host, port, 600)) {
            return new int[] {s.connected(), s.hungUp(Duration.ofSeconds(20))};
        }
    }

    @Test
    void aPlanDoesNotPrintItsSecret() {
        TrainJob.Plan plan = new TrainJob.Plan("run", "data", null, "yaml", 1, 1, TaskDevice.CPU, 2, TrainJob.Pipeline.NONE, "127.0.0.1", 1, RunSecret.generate(),
                1, 1, 1, TrainJob.Fault.NONE);
        assertTrue(plan.toString().contains("secret=RunSecret(redacted)"), plan.toString());
        assertFalse(java.util.regex.Pattern.compile("[0-9a-fA-F]{16}").matcher(plan.toString()).find(), plan.toString());
    }

    @Test
    void aWorkersHostIsTheAddressSparkAdvertisesWithoutItsPort() {
        assertEquals("10.1.2.3", TrainJob.Task.host("10.1.2.3:41000"));
        assertEquals("worker-7.example", TrainJob.Task.host("worker-7.example:41000"));
        assertEquals("fe80::1", TrainJob.Task.host("[fe80::1]:41000"));
    }

    /** The eval_loss of every line of a run's metrics.jsonl. */
    static List<Double> evalLosses(Path run) throws IOException {
        List<Double> out = new java.util.ArrayList<>();
        for (String line : Files.readAllLines(run.resolve("metrics.jsonl"))) {
            Matcher m = java.util.regex.Pattern.compile("\"eval_loss\":([-0-9.eE]+)").matcher(line);
            assertTrue(m.find(), line);
            out.add(Double.parseDouble(m.group(1)));
        }
        return out;
    }

    static String lossOnly(String metricsLine) {
        return metricsLine.replaceAll(",\"tokens_per_s\":[^}]*", "");
    }

    static String rootMessage(Throwable t) {
        StringBuilder sb = new StringBuilder();
        for (Throwable c = t; c != null; c = c.getCause()) {
            sb.append(c.getMessage()).append(" | ");
        }
        return sb.toString();
    }

    @Test
    void aRunThatFailsEveryAttemptReportsWhyAndLeavesSparkUsable() {
        Path run = dir.resolve("doomed");
        TrainingFailedException e = assertThrows(TrainingFailedException.class, () -> TrainJob.run(spark, run.toString(),
                data.toString(), config(DOCS_PER_BATCH * LEN), 2, new TrainJob.Fault(0, 1, true)));
        assertTrue(e.getMessage().startsWith("training failed (stage attempt 3): rank 0: IllegalStateException: injected test fault: "
                + "rank 0 fails after step 1 in stage attempt 3"), e.getMessage());
        assertEquals(3L, spark.sparkContext().parallelize(scala.jdk.javaapi.CollectionConverters.asScala(List.of(1, 2, 3)).toSeq(),
                2, scala.reflect.ClassTag$.MODULE$.apply(Integer.class)).count());
    }

    /** One task on local[2] trains two replicas; its checkpoint refuses a resume with one, naming the setting and both counts. */
    /**
     * M-FAC in Spark: two workers log the window's memory, and a stage retried after a lost worker
     * resumes from the checkpoint's window, Gram matrix and momentum and ends bit-identical.
     */
    @Test
    void mfacTrainsOnTwoWorkersAndARetriedStageEndsBitIdentical() throws IOException {
        RunConfig base = config(DOCS_PER_BATCH * LEN);
        RunConfig mfac = new RunConfig(MODEL, base.train().withOptimizer(org.kindling.models.config.OptimizerConfig.mfac(4, 1e-4, 0.5)));
        Path clean = dir.resolve("mfac");
        Path faulty = dir.resolve("mfac-faulty");
        List<StepResult> steps;
        try (LogCapture logs = new LogCapture()) {
            steps = TrainJob.run(spark, clean.toString(), data.toString(), mfac, 2);
            assertTrue(logs.lines().stream().anyMatch(l -> l.contains("rank 1: optimizer mfac (ngrads 4, damp 1.0E-4, momentum 0.5): "
                    + "window 4 × ")), logs.lines().toString());
        }
        assertEquals(6, steps.size());
        assertTrue(steps.get(5).loss() < steps.get(0).loss(), steps.toString());
        try (LogCapture logs = new LogCapture()) {
            TrainJob.run(spark, faulty.toString(), data.toString(), mfac, 2, new TrainJob.Fault(1, 3, false));
            assertTrue(logs.lines().stream().anyMatch(l -> l.contains("resumes from checkpoint step-2")), logs.lines().toString());
        }
        assertArrayEquals(weights(clean, 6), weights(faulty, 6), "a retried M-FAC stage must end bit-identical");
    }

    /**
     * zero: 1 on two workers: each logs its shard of AdamW's moments, the run equals the plain one bit
     * for bit (weights, losses, the optimizer state it checkpoints), and a stage retried after a lost
     * worker resumes from LATEST and ends bit-identical.
     */
    @Test
    void zeroOneOnTwoWorkersEqualsPlainDataParallelAndARetriedStageResumes() throws IOException {
        RunConfig plain = config(DOCS_PER_BATCH * LEN);
        RunConfig zero = new RunConfig(MODEL, plain.train().withZero(1));
        Path plainRun = dir.resolve("zero-plain");
        Path zeroRun = dir.resolve("zero-1");
        Path faulty = dir.resolve("zero-1-faulty");
        List<StepResult> a = TrainJob.run(spark, plainRun.toString(), data.toString(), plain, 2);
        List<StepResult> b;
        try (LogCapture logs = new LogCapture()) {
            b = TrainJob.run(spark, zeroRun.toString(), data.toString(), zero, 2);
            assertTrue(logs.lines().stream().anyMatch(l -> l.contains("rank 1: optimizer adamw") && l.contains("sharded (zero 1): ")),
                    logs.lines().toString());
        }
        assertEquals(a.stream().map(StepResult::loss).toList(), b.stream().map(StepResult::loss).toList());
        assertEquals(a.stream().map(StepResult::gradNorm).toList(), b.stream().map(StepResult::gradNorm).toList());
        for (String file : new String[] {"model.safetensors", "optimizer.safetensors"}) {
            assertArrayEquals(Files.readAllBytes(plainRun.resolve("checkpoints/step-6/" + file)),
                    Files.readAllBytes(zeroRun.resolve("checkpoints/step-6/" + file)), file);
        }
        try (LogCapture logs = new LogCapture()) {
            TrainJob.run(spark, faulty.toString(), data.toString(), zero, 2, new TrainJob.Fault(1, 3, false));
            assertTrue(logs.lines().stream().anyMatch(l -> l.contains("resumes from checkpoint step-2")), logs.lines().toString());
        }
        assertArrayEquals(weights(zeroRun, 6), weights(faulty, 6), "a retried zero-1 stage must end bit-identical");
    }

    @Test
    void hostOffloadedMomentsOnTwoWorkersEqualInMemoryOnesAndARetriedStageResumes() throws IOException {
        RunConfig plain = config(DOCS_PER_BATCH * LEN);
        RunConfig offloaded = new RunConfig(MODEL, plain.train().withOffload(true));
        Path plainRun = dir.resolve("offload-plain");
        Path faulty = dir.resolve("offload-faulty");
        TrainJob.run(spark, plainRun.toString(), data.toString(), plain, 2);
        try (LogCapture logs = new LogCapture()) {
            TrainJob.run(spark, faulty.toString(), data.toString(), offloaded, 2, new TrainJob.Fault(0, 3, false));
            assertTrue(logs.lines().stream().anyMatch(l -> l.contains("resumes from checkpoint step-2")), logs.lines().toString());
        }
        for (String file : new String[] {"model.safetensors", "optimizer.safetensors"}) {
            assertArrayEquals(Files.readAllBytes(plainRun.resolve("checkpoints/step-6/" + file)),
                    Files.readAllBytes(faulty.resolve("checkpoints/step-6/" + file)), file);
        }
    }

    @Test
    void twoPipelineStagesTrainTheBitsOfOneWorkerAndARetriedStageResumes() throws IOException {
        // Two micro-batches per step, so the 1F1B schedule keeps one in flight on stage 0 while the other passes.
        RunConfig cfg = new RunConfig(MODEL, new TrainConfig(7, 3e-3, 3e-4, 2, 6, 0.1, 0.9, 0.95, 1e-8, 1.0, 2,
                DOCS_PER_BATCH * LEN, 1, 2, 5));
        Path oneRun = dir.resolve("pipe-one");
        Path piped = dir.resolve("pipe-two");
        Path faulty = dir.resolve("pipe-faulty");
        // One model on one thread, as each stage runs (a GEMM's sums may be split differently across threads).
        List<StepResult> a = TrainJob.run(spark, oneRun.toString(), data.toString(), evalData.toString(), cfg, 1,
                new TaskDevice("cpu:1", false), line -> { });
        TrainJob.Pipeline two = new TrainJob.Pipeline(2, PipelinePolicy.ONE_F_ONE_B);
        List<StepResult> b;
        try (LogCapture logs = new LogCapture()) {
            b = TrainJob.run(spark, piped.toString(), data.toString(), null, cfg, 2, two, TaskDevice.CPU, TrainJob.Fault.NONE,
                    line -> { });
            assertTrue(logs.lines().stream().anyMatch(l -> l.contains("rank 1: pipeline stage 1 of 2 (blocks [0, 1, 2]), replica 0 of 1")),
                    logs.lines().toString());
        }
        assertEquals(a.stream().map(StepResult::loss).toList(), b.stream().map(StepResult::loss).toList());
        assertEquals(a.stream().map(StepResult::gradNorm).toList(), b.stream().map(StepResult::gradNorm).toList());
        for (String file : new String[] {"model.safetensors", "optimizer.safetensors"}) {
            assertArrayEquals(Files.readAllBytes(oneRun.resolve("checkpoints/step-6/" + file)),
                    Files.readAllBytes(piped.resolve("checkpoints/step-6/" + file)), file);
        }
        try (LogCapture logs = new LogCapture()) {
            // It evaluates after every step, through both stages: that must change no bit of training.
            TrainJob.run(spark, faulty.toString(), data.toString(), evalData.toString(), cfg, 2, two, TaskDevice.CPU,
                    new TrainJob.Fault(1, 3, false), line -> { });
            assertTrue(logs.lines().stream().anyMatch(l -> l.contains("resumes from checkpoint step-2")), logs.lines().toString());
        }
        assertArrayEquals(weights(piped, 6), weights(faulty, 6), "a retried pipeline stage with evaluations must end bit-identical");
        List<Double> wantEval = evalLosses(oneRun);
        List<Double> gotEval = evalLosses(faulty);
        assertEquals(6, gotEval.size(), gotEval.toString());
        for (int i = 0; i < 6; i++) {
            assertEquals(wantEval.get(i), gotEval.get(i), 1e-6, "eval_loss after step " + (i + 1) + ": the one worker's");
        }

        IllegalArgumentException odd = assertThrows(IllegalArgumentException.class, () -> TrainJob.run(spark,
                dir.resolve("pipe-odd").toString(), data.toString(), null, cfg, 1, two, TaskDevice.CPU, TrainJob.Fault.NONE, line -> { }));
        assertTrue(odd.getMessage().contains("--workers 1 is not a multiple of --pipeline-stages 2"), odd.getMessage());
        IllegalArgumentException zero = assertThrows(IllegalArgumentException.class, () -> TrainJob.run(spark,
                dir.resolve("pipe-zero").toString(), data.toString(), null, new RunConfig(MODEL, cfg.train().withZero(1)), 2, two,
                TaskDevice.CPU, TrainJob.Fault.NONE, line -> { }));
        assertTrue(zero.getMessage().startsWith("--pipeline-stages 2: zero 1"), zero.getMessage());
    }

    @Test
    void resumingWithAnotherReplicaCountIsRefusedNamingTheSetting() throws IOException {
        Path run = dir.resolve("replicas");
        TrainJob.run(spark, run.toString(), data.toString(), config(2 * DOCS_PER_BATCH * LEN), 1);
        spark.conf().set(TrainJob.REPLICAS_PER_TASK, "1");
        try {
            TrainingFailedException e = assertThrows(TrainingFailedException.class, () -> TrainJob.run(spark, run.toString(),
                    data.toString(), config(2 * DOCS_PER_BATCH * LEN), 1));
            assertTrue(e.getMessage().contains("was written with spark.kindling.replicasPerTask = 2 replica(s) per task, but this "
                    + "task trains 1"), e.getMessage());
        } finally {
            spark.conf().unset(TrainJob.REPLICAS_PER_TASK);
        }
    }

    @Test
    void aWorkerThatDiesBeforeTheRendezvousDoesNotLeaveItsPeerWaiting() {
        long t0 = System.nanoTime();
        assertThrows(Exception.class, () -> TrainJob.run(spark, dir.resolve("early").toString(), data.toString(),
                config(DOCS_PER_BATCH * LEN), 2, new TrainJob.Fault(0, 0, true)));
        double seconds = (System.nanoTime() - t0) / 1e9;
        // Four stage attempts; without abandoning the rendezvous each would wait out its 60 s timeout.
        assertTrue(seconds < 40, "took " + seconds + " s");
    }

    @Test
    void aWorkerThatStopsAnsweringTripsTheCollectiveTimeoutWithAClearError() {
        spark.conf().set(TrainJob.COLLECTIVE_TIMEOUT, "2");
        try {
            long t0 = System.nanoTime();
            TrainingFailedException e = assertThrows(TrainingFailedException.class, () -> TrainJob.run(spark,
                    dir.resolve("stalled").toString(), data.toString(), config(DOCS_PER_BATCH * LEN), 2,
                    new TrainJob.Fault(1, 2, true, true)));
            assertTrue(e.getMessage().contains("rank 0: CollectiveTimeoutException: rank 0: rank 1 (")
                    && e.getMessage().contains("sent nothing for 2 s") && e.getMessage().contains("stalled or dead"), e.getMessage());
            assertTrue((System.nanoTime() - t0) / 1e9 < 60, "four attempts, each ending 2 s after the stall");
        } finally {
            spark.conf().unset(TrainJob.COLLECTIVE_TIMEOUT);
        }
    }

    /**
     * A notebook's interrupt while a worker hangs (and its peer waits on it in the ring): the run's
     * job group is cancelled, the call returns once no task of it runs, and the session runs jobs.
     */
    @Test
    void anInterruptCancelsAHungRunAndLeavesTheSessionUsable() throws Exception {
        java.util.concurrent.atomic.AtomicReference<Throwable> thrown = new java.util.concurrent.atomic.AtomicReference<>();
        java.util.concurrent.CountDownLatch stepTwo = new java.util.concurrent.CountDownLatch(1);
        Thread caller = new Thread(() -> {
            try {
                TrainJob.run(spark, dir.resolve("interrupted").toString(), data.toString(), config(DOCS_PER_BATCH * LEN), 2,
                        TaskDevice.CPU, new TrainJob.Fault(1, 2, true, true), line -> {
                            if (line.startsWith("step 2/")) {
                                stepTwo.countDown();
                            }
                        });
            } catch (Throwable t) {
                thrown.set(t);
            }
        });
        caller.start();
        assertTrue(stepTwo.await(60, TimeUnit.SECONDS), "the run reached step 2");
        Thread.sleep(500); // rank 1 now sleeps in its stall and rank 0 waits for it in the ring
        long t0 = System.nanoTime();
        caller.interrupt();
        caller.join(30_000);
        assertFalse(caller.isAlive(), "the interrupted run returned");
        assertTrue((System.nanoTime() - t0) / 1e9 < 20, "well before the 60 s collective timeout");
        assertTrue(thrown.get() instanceof TrainingInterruptedException, String.valueOf(thrown.get()));
        assertTrue(thrown.get().getMessage().contains("was interrupted: its Spark jobs (group kindling-train-"), thrown.get().getMessage());
        assertEquals(0, spark.sparkContext().statusTracker().getActiveJobIds().length);
        assertEquals(3, spark.range(3).count());
    }

    @Test
    void aNonFiniteLossStopsTheRunWithoutRetries() {
        RunConfig explosive = new RunConfig(MODEL, new TrainConfig(7, 1e30, 1e30, 0, 6, 0.0, 0.9, 0.95, 1e-8, 0.0, 1,
                DOCS_PER_BATCH * LEN, 1, 0, 5));
        TrainingFailedException e = assertThrows(TrainingFailedException.class,
                () -> TrainJob.run(spark, dir.resolve("nan").toString(), data.toString(), explosive, 2));
        assertTrue(e.getMessage().startsWith("training stopped at a non-finite value: step "), e.getMessage());
    }

    @Test
    void aTruncatedShardFailsTheRunAtOnceNamingTheFile() throws Exception {
        Path broken = dir.resolve("broken-data");
        writeDataset(broken, 16);
        Path shard = broken.resolve("shard-0.arrow");
        byte[] whole = Files.readAllBytes(shard);
        Files.write(shard, java.util.Arrays.copyOf(whole, whole.length / 2));
        java.util.concurrent.atomic.AtomicInteger retries = new java.util.concurrent.atomic.AtomicInteger();
        SparkListener retryCounter = new SparkListener() {
            @Override
            public void onStageSubmitted(SparkListenerStageSubmitted submitted) {
                if (submitted.stageInfo().attemptNumber() > 0) {
                    retries.incrementAndGet();
                }
            }
        };
        spark.sparkContext().addSparkListener(retryCounter);
        try {
            TrainingFailedException e = assertThrows(TrainingFailedException.class, () -> TrainJob.run(spark,
                    dir.resolve("broken-run").toString(), broken.toString(), config(DOCS_PER_BATCH * LEN), 2));
            assertTrue(e.getMessage().startsWith("training failed without retries: rank ") && e.getMessage().contains(shard.toString())
                    && e.getMessage().contains("not a readable Arrow IPC file (truncated or corrupt)"), e.getMessage());
            spark.sparkContext().listenerBus().waitUntilEmpty();
            assertEquals(0, retries.get(), "stage attempts after the first");
        } finally {
            spark.sparkContext().removeSparkListener(retryCounter);
        }
    }

    @Test
    void moreWorkersThanSlotsIsRefusedUpFront() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> TrainJob.run(spark, dir.resolve("big").toString(), data.toString(), config(DOCS_PER_BATCH * LEN), 3));
        assertTrue(e.getMessage().contains("--workers 3 needs 3 task slots"), e.getMessage());
    }
}
