package org.kindling.models.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.kindling.models.Gpt;
import org.kindling.models.GptStage;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.nn.Param;
import org.kindling.models.nn.Precision;
import org.kindling.models.pipeline.PipelineException;
import org.kindling.models.pipeline.PipelineExecutor;
import org.kindling.models.pipeline.PipelinePolicy;
import org.kindling.models.pipeline.Schedule;
import org.kindling.models.pipeline.StageSender;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;
import org.kindling.ops.cpu.CpuDevice;

/**
 * A GPT cut into pipeline stages, each on its own thread and device, trains the bits of one model
 * accumulating the same micro-batches in the trainer: the same loss, gradients and AdamW step,
 * under every schedule policy (dropout on, so each micro-batch's masks must follow it to every stage).
 */
class PipelineStagesTest {
    private static final int VOCAB = 23;
    private static final ModelConfig MODEL = ModelConfig.gpt(VOCAB, 16, 4, 2, 2, 64, 4, 0.1, 0.2, 1e-5);
    private static final int MICRO = 4;
    /** No clipping: the clip factor comes from a norm summed in another order across stages. */
    private static final TrainConfig TRAIN = train(MICRO);

    /** The trainer's config accumulating {@code micro} micro-batches per step. */
    private static TrainConfig train(int micro) {
        return new TrainConfig(7, 3e-3, 3e-4, 0, 12, 0.1, 0.9, 0.95, 1e-8, 0, micro, 512, 5, 0, 2);
    }

    /** Micro-batches of two packed sequences, 30 tokens each. */
    private static List<TokenBatch> batches(int count) {
        SplittableRandom r = new SplittableRandom(11);
        List<TokenBatch> out = new ArrayList<>();
        for (int i = 0; i < count; i++) {
            int[] tokens = new int[30];
            for (int j = 0; j < tokens.length; j++) {
                tokens[j] = r.nextInt(VOCAB);
            }
            out.add(new TokenBatch(tokens, new int[] {0, 10 + i, 30}));
        }
        return out;
    }

    /** One trainer step over the micro-batches: {loss}, gradients and weights after it, by name. */
    private static Map<String, float[]>[] reference(List<TokenBatch> batches, double[] loss) {
        @SuppressWarnings("unchecked")
        Map<String, float[]>[] out = new Map[] {new HashMap<>(), new HashMap<>()};
        try (Device dev = CpuDevice.open(1); Gpt model = new Gpt(MODEL, dev, 5); Trainer t = new Trainer(model, train(batches.size()))) {
            loss[0] = t.step(DataSource.indexed(p -> batches.get((int) p))).loss();
            for (Param p : model.params().list()) {
                out[0].put(p.name(), p.grad().toFloatArray());
                out[1].put(p.name(), p.value().toFloatArray());
            }
        }
        return out;
    }

    /** Two stages of the model (seed 5), each on a single-thread device of its own, added to lists the caller closes. */
    private static void twoStages(List<Device> devices, List<GptStage> stages) {
        for (int s = 0; s < 2; s++) {
            devices.add(CpuDevice.open(1));
            stages.add(new GptStage(MODEL, devices.get(s), 5, s, 2));
        }
    }

    @ParameterizedTest(name = "{0} stages, {1}")
    @CsvSource({"2, 1f1b", "2, 1f1b-recompute", "2, stage-aware", "2, shifted", "3, 1f1b", "3, 1f1b-recompute",
            "3, stage-aware", "3, shifted", "4, 1f1b"})
    void stagesTrainTheBitsOfGradientAccumulation(int stageCount, String policy) {
        assertTrainsTheBits(stageCount, MICRO, (pipe, batches, seeds) ->
                pipe.step(Schedule.build(stageCount, MICRO, PipelinePolicy.parse(policy)), 0, batches, seeds));
    }

    /** Message-driven order sums each stage's micro-batches in the same order, so it trains the same bits as static order. */
    @ParameterizedTest(name = "{0} stages, {1}, {2} micro-batches")
    @CsvSource({"2, 1f1b, 4", "2, 1f1b-recompute, 5", "3, 1f1b, 5", "3, 1f1b-recompute, 4", "3, shifted, 6", "3, stage-aware, 4"})
    void messageDrivenTrainsTheBitsOfGradientAccumulation(int stageCount, String policy, int micro) {
        assertTrainsTheBits(stageCount, micro, (pipe, batches, seeds) -> pipe.step(Schedule.build(stageCount, micro,
                PipelinePolicy.parse(policy)), PipelineExecutor.Order.MESSAGE_DRIVEN, 0, batches, seeds));
    }

    /**
     * Random per-message latencies (and compute jitter) change which of a stage's messages arrives
     * first, and so the order it runs its work in, but no bit, and nothing deadlocks.
     */
    @ParameterizedTest(name = "seed {0}, {1} stages, {2}")
    @CsvSource({"1, 3, shifted", "2, 3, 1f1b", "3, 2, 1f1b-recompute", "4, 4, 1f1b", "5, 3, 1f1b-recompute"})
    void randomMessageDelaysChangeNoBitAndNeverDeadlock(long seed, int stageCount, String policy) {
        int micro = 6;
        Schedule schedule = Schedule.build(stageCount, micro, PipelinePolicy.parse(policy));
        try (DelayedLinks links = new DelayedLinks(seed, 3_000_000)) {
            long t0 = System.nanoTime();
            assertTrainsTheBits(stageCount, micro, (pipe, batches, seeds) -> pipe.withLinks(links).stepMessageDriven(schedule, 0,
                    batches, seeds, schedule.inFlightBounds()));
            assertTrue((System.nanoTime() - t0) / 1e9 < 50, "finished well before the 60 s message deadline");
            assertEquals(2L * micro * (stageCount - 1), links.delivered(), "every message went through the delayed links");
        }
    }

    /** A step's result from a pipeline of the test's stages. */
    @FunctionalInterface
    private interface PipelineRun {
        PipelineExecutor.Result run(PipelineExecutor pipe, List<TokenBatch> batches, long[] seeds);
    }

    /** {@code run}'s loss, gradients and AdamW step on {@code stageCount} stages are the trainer's bits over {@code micro} micro-batches. */
    private static void assertTrainsTheBits(int stageCount, int micro, PipelineRun run) {
        List<TokenBatch> batches = batches(micro);
        double[] wantLoss = new double[1];
        Map<String, float[]>[] want = reference(batches, wantLoss);
        List<Device> devices = new ArrayList<>();
        List<GptStage> stages = new ArrayList<>();
        try (Device init = CpuDevice.open(1); Gpt start = new Gpt(MODEL, init, 5)) {
            for (int s = 0; s < stageCount; s++) {
                devices.add(CpuDevice.open(1));
                GptStage stage = new GptStage(MODEL, devices.get(s), 99, s, stageCount);
                stages.add(stage);
                for (Param p : stage.params().list()) {
                    p.value().copyFrom(start.params().get(p.name()).value().toFloatArray());
                }
            }
            long[] seeds = new long[micro];
            for (int mb = 0; mb < micro; mb++) {
                seeds[mb] = Trainer.dropoutSeed(TRAIN.seed(), 0, 0, mb);
            }
            PipelineExecutor.Result r = run.run(new PipelineExecutor(stages, Duration.ofSeconds(60)), batches, seeds);
            assertEquals(wantLoss[0], r.loss(), "loss");
            int params = 0;
            for (GptStage stage : stages) {
                for (Param p : stage.params().list()) {
                    assertArrayEquals(want[0].get(p.name()), p.grad().toFloatArray(), "gradient of " + p.name());
                    params += p.name().equals("wte.weight") && !stage.first() ? 0 : 1;
                }
                try (Optimizer opt = Optimizer.create(stage.params(), TRAIN)) {
                    opt.step(stage.params(), 0, (float) TRAIN.lrAt(0), 1f);
                }
                for (Param p : stage.params().list()) {
                    assertArrayEquals(want[1].get(p.name()), p.value().toFloatArray(), "weight of " + p.name() + " after AdamW");
                }
                assertTrue(stage.peakActivationBytes() > 0, "stage " + stage.index() + " counted its activations");
            }
            assertEquals(want[0].size(), params, "every parameter of the model on some stage, wte on the first and last");
        } finally {
            stages.forEach(GptStage::close);
            devices.forEach(Device::close);
        }
    }

    /**
     * Links that deliver each message after a random delay up to {@code maxNanos}, seeded, in the
     * order sent (as a TCP connection): one delivery thread per link.
     */
    private static final class DelayedLinks implements PipelineExecutor.LinkWrapper, AutoCloseable {
        private final SplittableRandom random;
        private final long maxNanos;
        private final List<ExecutorService> pools = new ArrayList<>();
        private final AtomicLong delivered = new AtomicLong();

        DelayedLinks(long seed, long maxNanos) {
            this.random = new SplittableRandom(seed);
            this.maxNanos = maxNanos;
        }

        @Override
        public synchronized StageSender wrap(int from, int to, StageSender sender) {
            ExecutorService pool = Executors.newSingleThreadExecutor(task -> {
                Thread t = new Thread(task, "delayed-link-" + from + "-" + to);
                t.setDaemon(true);
                return t;
            });
            pools.add(pool);
            SplittableRandom r = random.split();
            long[] last = {System.nanoTime()};
            // One stage thread sends on a link; its single delivery thread keeps the order.
            return (mb, data, timeout) -> {
                long at = Math.max(System.nanoTime() + r.nextLong(maxNanos), last[0]);
                last[0] = at;
                pool.execute(() -> {
                    try {
                        for (long left; (left = at - System.nanoTime()) > 0; ) {
                            Thread.sleep(left / 1_000_000, (int) (left % 1_000_000));
                        }
                    } catch (InterruptedException e) {
                        data.close();
                        return;
                    }
                    // Counted before the hand-over, so a stage that has the message sees the count.
                    delivered.incrementAndGet();
                    sender.send(mb, data, timeout);
                });
            };
        }

        long delivered() {
            return delivered.get();
        }

        @Override
        public synchronized void close() {
            for (ExecutorService pool : pools) {
                pool.shutdownNow();
                try {
                    assertTrue(pool.awaitTermination(10, TimeUnit.SECONDS), "a delayed link's thread stopped");
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    throw new AssertionError("interrupted closing delayed links", e);
                }
            }
        }
    }

    /** A link that swaps its first two messages: message-driven order would sum gradients in another order, so it fails. */
    @Test
    void aReorderingLinkFailsTheStepNamingTheStage() {
        List<Device> devices = new ArrayList<>();
        List<GptStage> stages = new ArrayList<>();
        try {
            twoStages(devices, stages);
            PipelineExecutor pipe = new PipelineExecutor(stages, Duration.ofSeconds(60)).withLinks((from, to, sender) -> {
                if (from != 0) {
                    return sender;
                }
                int[] sent = {0};
                Tensor[] held = {null};
                return (mb, data, timeout) -> {
                    if (sent[0]++ == 0) {
                        held[0] = data;
                        return;
                    }
                    sender.send(mb, data, timeout);
                    if (held[0] != null) {
                        sender.send(0, held[0], timeout);
                        held[0] = null;
                    }
                };
            });
            PipelineException e = assertThrows(PipelineException.class, () -> pipe.step(Schedule.build(2, MICRO,
                    PipelinePolicy.ONE_F_ONE_B), PipelineExecutor.Order.MESSAGE_DRIVEN, 0, batches(MICRO), new long[MICRO]));
            assertTrue(e.getMessage().contains("on stage 1: stage 1: forward of micro-batch 1 came before micro-batch 0's"),
                    e.getMessage());
        } finally {
            stages.forEach(GptStage::close);
            devices.forEach(Device::close);
        }
    }

    @Test
    void keptActivationsCostMoreThanRecomputedOnes() {
        long[] kept = peaks(PipelinePolicy.ONE_F_ONE_B);
        long[] recomputed = peaks(PipelinePolicy.ONE_F_ONE_B_RECOMPUTE);
        // Stage 0 holds two micro-batches in flight under 1F1B; recomputation keeps only inputs for the older one.
        assertTrue(recomputed[0] < kept[0], "stage 0: recompute " + recomputed[0] + " vs kept " + kept[0]);
    }

    private static long[] peaks(PipelinePolicy policy) {
        List<Device> devices = new ArrayList<>();
        List<GptStage> stages = new ArrayList<>();
        try {
            twoStages(devices, stages);
            return new PipelineExecutor(stages, Duration.ofSeconds(60))
                    .step(Schedule.build(2, MICRO, policy), 0, batches(MICRO), new long[MICRO]).peakActivationBytes();
        } finally {
            stages.forEach(GptStage::close);
            devices.forEach(Device::close);
        }
    }

    @Test
    void splitBalancesBlocksAndWeighsTheHead() {
        assertArrayEquals(new int[] {0, 2, 4}, GptStage.split(MODEL, 2));
        assertArrayEquals(new int[] {0, 1, 2, 3, 4}, GptStage.split(MODEL, 4));
        // A head as large as 3 blocks: the last stage gets one block beside it.
        ModelConfig wideVocab = ModelConfig.gpt(16 * 12 * 3 / 2 * 2, 16, 4, 2, 2, 64, 4, 0, 0.2, 1e-5);
        int[] b = GptStage.split(wideVocab, 2);
        assertEquals(3, b[1], "blocks " + java.util.Arrays.toString(b));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> GptStage.split(MODEL, 5));
        assertTrue(e.getMessage().contains("n_layer = 4"), e.getMessage());
    }

    @Test
    void bf16KeepsNoTwoMicroBatchesButRecomputes() {
        List<Device> devices = new ArrayList<>();
        List<GptStage> stages = new ArrayList<>();
        try {
            twoStages(devices, stages);
            stages.forEach(st -> st.params().setPrecision(Precision.BF16));
            PipelineExecutor pipe = new PipelineExecutor(stages, Duration.ofSeconds(60));
            PipelineException e = assertThrows(PipelineException.class,
                    () -> pipe.step(Schedule.build(2, MICRO, PipelinePolicy.ONE_F_ONE_B), 0, batches(MICRO), new long[MICRO]));
            assertTrue(e.getMessage().contains("only precision fp32 allows"), e.getMessage());
            assertTrue(Double.isFinite(pipe.step(Schedule.build(2, MICRO, PipelinePolicy.SHIFTED), 1, batches(MICRO),
                    new long[MICRO]).loss()));
        } finally {
            stages.forEach(GptStage::close);
            devices.forEach(Device::close);
        }
    }

    @Test
    void unequalMicroBatchesAndAFailingStageAreReported() {
        List<Device> devices = new ArrayList<>();
        List<GptStage> stages = new ArrayList<>();
        try {
            twoStages(devices, stages);
            PipelineExecutor pipe = new PipelineExecutor(stages, Duration.ofSeconds(60));
            List<TokenBatch> uneven = new ArrayList<>(batches(2));
            uneven.set(1, TokenBatch.single(new int[] {1, 2, 3}));
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> pipe.step(Schedule.build(2, 2, PipelinePolicy.ONE_F_ONE_B), 0, uneven, new long[2]));
            assertTrue(e.getMessage().contains("equal token counts"), e.getMessage());
            // A token outside the vocabulary fails stage 0's embedding; stage 1, waiting for it, is stopped, not left to time out.
            List<TokenBatch> bad = new ArrayList<>(batches(2));
            int[] tokens = bad.get(1).tokens().clone();
            tokens[3] = VOCAB + 5;
            bad.set(1, new TokenBatch(tokens, bad.get(1).cuSeqlens()));
            for (PipelineExecutor.Order order : PipelineExecutor.Order.values()) {
                long t0 = System.nanoTime();
                PipelineException f = assertThrows(PipelineException.class,
                        () -> pipe.step(Schedule.build(2, 2, PipelinePolicy.ONE_F_ONE_B), order, 0, bad, new long[2]));
                assertTrue((System.nanoTime() - t0) / 1e9 < 30, order.key() + " stopped early: " + f.getMessage());
                assertTrue(f.getMessage().startsWith("pipeline step failed on stage 0: "), order.key() + ": " + f.getMessage());
            }
            // The stages train again after the failed step.
            assertTrue(Double.isFinite(pipe.step(Schedule.build(2, 2, PipelinePolicy.SHIFTED), 1, batches(2), new long[2]).loss()));
            assertTrue(Double.isFinite(pipe.step(Schedule.build(2, 2, PipelinePolicy.SHIFTED), PipelineExecutor.Order.MESSAGE_DRIVEN, 2,
                    batches(2), new long[2]).loss()));
        } finally {
            stages.forEach(GptStage::close);
            devices.forEach(Device::close);
        }
    }
}
