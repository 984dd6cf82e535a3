package org.kindling.models.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import java.util.SplittableRandom;
import java.util.concurrent.atomic.AtomicReferenceArray;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.kindling.models.Gpt;
import org.kindling.models.GptStage;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.RunConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.io.Checkpoints;
import org.kindling.models.io.LocalRunStorage;
import org.kindling.models.pipeline.InMemoryChannel;
import org.kindling.models.pipeline.PipelineExecutor;
import org.kindling.models.pipeline.PipelinePolicy;
import org.kindling.models.pipeline.StageChannel;
import org.kindling.ops.Device;
import org.kindling.ops.cpu.CpuDevice;

/**
 * Pipeline stages trained by {@link StageTrainer}s, each on its own thread and device as each would
 * be on its own executor: with one replica they train the bits of one {@link Trainer} on the whole
 * model, clipping included, write the same checkpoint files, and resume from them bit for bit.
 */
class StageTrainerTest {
    private static final int VOCAB = 23;
    private static final ModelConfig MODEL = ModelConfig.gpt(VOCAB, 16, 4, 2, 2, 64, 4, 0.1, 0.2, 1e-5);
    private static final int MICRO = 4;
    /** A clip low enough to engage: the norm must be the whole model's, summed in its order. */
    private static final TrainConfig TRAIN = new TrainConfig(7, 3e-3, 3e-4, 1, 4, 0.1, 0.9, 0.95, 1e-8, 0.05, MICRO, 512, 1, 2, 3);

    @TempDir
    Path dir;

    /** Replica {@code replica}'s micro-batch at {@code position}: two packed sequences of 30 tokens, or fewer when {@code ragged}. */
    private static TokenBatch batch(int replica, long position, boolean ragged) {
        SplittableRandom r = new SplittableRandom(31 * position + replica);
        int n = ragged ? 20 + (int) (position % 3) * 5 : 30;
        int[] tokens = new int[n];
        for (int j = 0; j < n; j++) {
            tokens[j] = r.nextInt(VOCAB);
        }
        return new TokenBatch(tokens, new int[] {0, 10 + (int) (position % 4), n});
    }

    private static DataSource data(int replica, boolean ragged) {
        return DataSource.indexed(p -> batch(replica, p, ragged));
    }

    /** The reference: one trainer on the whole model, checkpointing into {@code run}. */
    private static List<StepResult> single(Path run, boolean ragged) {
        return single(MODEL, run, ragged);
    }

    private static List<StepResult> single(ModelConfig cfg, Path run, boolean ragged) {
        List<StepResult> out = new ArrayList<>();
        try (Device dev = CpuDevice.open(1); Gpt model = new Gpt(cfg, dev, TRAIN.seed()); Trainer t = new Trainer(model, TRAIN)) {
            Checkpoints ck = new Checkpoints(new LocalRunStorage(run));
            TrainLoop.run(t, data(0, ragged), ck, ck.latest(), new RunConfig(cfg, TRAIN), out::add);
        }
        return out;
    }

    /** {@code stages} × {@code replicas} stage trainers on threads, resuming from {@code run}'s LATEST; replica 0's last stage's results. */
    private static List<StepResult> pipeline(Path run, int stages, int replicas, String policy, boolean ragged) {
        return pipeline(MODEL, run, stages, replicas, policy, PipelineExecutor.Order.STATIC, ragged);
    }

    private static List<StepResult> pipeline(ModelConfig cfg, Path run, int stages, int replicas, String policy,
                                             PipelineExecutor.Order order, boolean ragged) {
        int world = stages * replicas;
        List<SharedMemorySync> everyone = SharedMemorySync.group(world, 60);
        List<List<SharedMemorySync>> perStage = new ArrayList<>();
        for (int s = 0; s < stages; s++) {
            perStage.add(SharedMemorySync.group(replicas, 60));
        }
        List<StageChannel> channels = new ArrayList<>();
        List<List<StepResult>> results = new ArrayList<>();
        AtomicReferenceArray<Throwable> failures = new AtomicReferenceArray<>(world);
        Thread[] threads = new Thread[world];
        Checkpoints ck = new Checkpoints(new LocalRunStorage(run));
        Optional<String> resume = ck.latest();
        StageChannel[][] fwd = new StageChannel[replicas][stages];
        StageChannel[][] bwd = new StageChannel[replicas][stages];
        for (int j = 0; j < replicas; j++) {
            for (int s = 0; s + 1 < stages; s++) {
                fwd[j][s] = new InMemoryChannel("act " + s, MICRO + 1);
                bwd[j][s] = new InMemoryChannel("grad " + s, MICRO + 1);
                channels.add(fwd[j][s]);
                channels.add(bwd[j][s]);
            }
        }
        for (int rank = 0; rank < world; rank++) {
            int j = rank / stages;
            int s = rank % stages;
            List<StepResult> mine = new ArrayList<>();
            results.add(mine);
            StageTrainer.Links links = new StageTrainer.Links(s > 0 ? fwd[j][s - 1] : null, s + 1 < stages ? fwd[j][s] : null,
                    s + 1 < stages ? bwd[j][s] : null, s > 0 ? bwd[j][s - 1] : null);
            GradientSync reps = replicas == 1 ? GradientSync.SINGLE : perStage.get(s).get(j);
            int r = rank;
            threads[rank] = new Thread(() -> {
                try (Device dev = CpuDevice.open(1); GptStage stage = GptStage.initialized(cfg, dev, TRAIN.seed(), s, stages);
                     StageTrainer t = new StageTrainer(stage, stages, cfg, TRAIN, PipelinePolicy.parse(policy), order, reps,
                             everyone.get(r), links, Duration.ofSeconds(60))) {
                    TrainLoop.runStage(t, data(j, ragged), ck, resume, new RunConfig(cfg, TRAIN), mine::add);
                } catch (Throwable e) {
                    failures.set(r, e);
                    for (SharedMemorySync sync : everyone) {
                        sync.abort();
                    }
                    channels.forEach(StageChannel::close);
                }
            });
            threads[rank].start();
        }
        for (Thread t : threads) {
            try {
                t.join(120_000);
            } catch (InterruptedException e) {
                throw new IllegalStateException(e);
            }
        }
        channels.forEach(StageChannel::close);
        for (int i = 0; i < world; i++) {
            if (failures.get(i) != null) {
                throw new IllegalStateException("worker " + i + " failed", failures.get(i));
            }
        }
        return results.get(stages - 1);
    }

    private static void assertSameFiles(Path a, Path b, int step) throws IOException {
        for (String f : new String[] {"model.safetensors", "optimizer.safetensors"}) {
            assertArrayEquals(Files.readAllBytes(a.resolve("checkpoints/step-" + step + "/" + f)),
                    Files.readAllBytes(b.resolve("checkpoints/step-" + step + "/" + f)), f + " at step " + step);
        }
    }

    @ParameterizedTest(name = "{0} stages, {1}, {2}")
    @CsvSource({"2, 1f1b, static", "2, shifted, static", "3, 1f1b-recompute, static", "3, stage-aware, static",
        "2, 1f1b, message-driven", "3, shifted, message-driven"})
    void oneReplicaTrainsAndCheckpointsTheBitsOfOneTrainer(int stages, String policy, String order) throws IOException {
        Path one = dir.resolve("one");
        Path piped = dir.resolve("piped");
        List<StepResult> want = single(one, false);
        List<StepResult> got = pipeline(MODEL, piped, stages, 1, policy, PipelineExecutor.Order.parse(order), false);
        assertEquals(want.stream().map(StepResult::loss).toList(), got.stream().map(StepResult::loss).toList(), "losses");
        assertEquals(want.stream().map(StepResult::gradNorm).toList(), got.stream().map(StepResult::gradNorm).toList(), "norms");
        assertTrue(want.get(0).gradNorm() > TRAIN.gradClip(), "the clip engages");
        assertSameFiles(one, piped, 2);
        assertSameFiles(one, piped, 4);
        assertTrue(Files.notExists(piped.resolve("checkpoints/.parts-step-4")), "the stages' shares are gone once gathered");
    }

    /** Fixed tensors (a FastFood basis per layer) start as the whole model's and land after the weights in the gathered files. */
    @Test
    void fixedTensorsOfEveryStageAreInTheGatheredCheckpoint() throws IOException {
        ModelConfig fastfood = MODEL.withMixers(java.util.Collections.nCopies(4,
                new org.kindling.models.mixers.linear.KernelizedSpec(2, org.kindling.models.mixers.linear.KernelizedSpec.Kernel.FASTFOOD_RKS, 8, 1,
                        1e-6)));
        Path one = dir.resolve("ff-one");
        Path piped = dir.resolve("ff-piped");
        List<StepResult> want = single(fastfood, one, false);
        List<StepResult> got = pipeline(fastfood, piped, 2, 1, "1f1b", PipelineExecutor.Order.STATIC, false);
        assertEquals(want.stream().map(StepResult::loss).toList(), got.stream().map(StepResult::loss).toList(), "losses");
        assertSameFiles(one, piped, 4);
    }

    @Test
    void stagesResumeFromACheckpointBitForBit() throws IOException {
        Path whole = dir.resolve("whole");
        Path resumed = dir.resolve("resumed");
        pipeline(whole, 2, 1, "1f1b", false);
        pipeline(resumed, 2, 1, "1f1b", false);
        // Back to step 2, as a run killed after it would be.
        Files.writeString(resumed.resolve("checkpoints/LATEST"), "step-2\n");
        for (String f : new String[] {"model.safetensors", "optimizer.safetensors", "state.json"}) {
            Files.delete(resumed.resolve("checkpoints/step-4/" + f));
        }
        List<StepResult> rest = pipeline(resumed, 2, 1, "1f1b", false);
        assertEquals(List.of(3, 4), rest.stream().map(StepResult::step).toList());
        assertSameFiles(whole, resumed, 4);
    }

    @Test
    void raggedMicroBatchesArePaddedWithoutChangingTheLoss() throws IOException {
        List<StepResult> want = single(dir.resolve("one"), true);
        List<StepResult> got = pipeline(dir.resolve("piped"), 2, 1, "1f1b", true);
        for (int i = 0; i < want.size(); i++) {
            assertEquals(want.get(i).loss(), got.get(i).loss(), 1e-5 * want.get(i).loss(), "loss of step " + (i + 1));
            assertEquals(want.get(i).gradNorm(), got.get(i).gradNorm(), 1e-4 * want.get(i).gradNorm(), "norm of step " + (i + 1));
            assertEquals(want.get(i).tokens(), got.get(i).tokens(), "tokens of step " + (i + 1) + " (the padding is not counted)");
        }
    }

    @Test
    void twoReplicasOfTwoStagesCheckpointLoadableWeights() throws IOException {
        Path run = dir.resolve("two");
        List<StepResult> got = pipeline(run, 2, 2, "1f1b", false);
        assertEquals(4, got.size());
        Checkpoints ck = new Checkpoints(new LocalRunStorage(run));
        assertEquals(2, ck.state("step-4").dataPositions().length, "one data position per replica");
        try (Device dev = CpuDevice.open(1); Gpt model = new Gpt(MODEL, dev, 1)) {
            ck.loadWeights("step-4", model);
        }
        assertTrue(got.get(3).loss() < got.get(0).loss(), "it learns: " + got);
    }

    @Test
    void aStageRefusesACheckpointOfAnotherModel() {
        Path run = dir.resolve("deeper");
        single(run, false);
        ModelConfig shallower = ModelConfig.gpt(VOCAB, 16, 2, 2, 2, 64, 4, 0.1, 0.2, 1e-5);
        try (Device dev = CpuDevice.open(1); GptStage stage = GptStage.initialized(shallower, dev, 7, 0, 2);
             InMemoryChannel act = new InMemoryChannel("act", 1); InMemoryChannel grad = new InMemoryChannel("grad", 1);
             StageTrainer t = new StageTrainer(stage, 2, shallower, TRAIN, PipelinePolicy.ONE_F_ONE_B, PipelineExecutor.Order.STATIC,
                     GradientSync.SINGLE,
                     SharedMemorySync.group(2, 1).get(0), new StageTrainer.Links(null, act, grad, null), Duration.ofSeconds(1))) {
            Checkpoints ck = new Checkpoints(new LocalRunStorage(run));
            IllegalStateException e = assertThrows(IllegalStateException.class,
                    () -> ck.restorePart("step-4", stage.params(), t.optimizer(), t.modelTensors()));
            assertTrue(e.getMessage().contains("tensor h.2.") && e.getMessage().contains("is not part of this model"), e.getMessage());
        }
    }

    @Test
    void optimizersThatSpanTheWholeModelAreRefused() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> {
            try (Device dev = CpuDevice.open(1); GptStage stage = new GptStage(MODEL, dev, 1, 0, 1)) {
                new StageTrainer(stage, 1, MODEL, TRAIN.withZero(1), PipelinePolicy.ONE_F_ONE_B, PipelineExecutor.Order.STATIC,
                        GradientSync.SINGLE,
                        GradientSync.SINGLE, new StageTrainer.Links(null, null, null, null), Duration.ofSeconds(1)).close();
            }
        });
        assertTrue(e.getMessage().contains("zero 1"), e.getMessage());
    }
}
