package org.kindling.models.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.kindling.models.Gpt;
import org.kindling.models.channel.MlpSpec;
import org.kindling.models.channel.MoeSpec;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.Synthetic;
import org.kindling.models.nn.Init;
import org.kindling.models.nn.ParamGroup;
import org.kindling.models.nn.Params;
import org.kindling.ops.CompletableFence;
import org.kindling.ops.Device;
import org.kindling.ops.cpu.CpuDevice;

/** Replicas in one JVM with shared-memory gradient sums equal one trainer on the whole batch, and stay identical. */
class DataParallelTest {
    static final ModelConfig MODEL = ModelConfig.gpt(20, 32, 2, 4, 2, 64, 4, 0, 0.02, 1e-5);
    static final TrainConfig TRAIN = new TrainConfig(5, 3e-3, 3e-4, 2, 6, 0.1, 0.9, 0.95, 1e-8, 1.0, 1, 4096, 1, 0, 1);
    /**
     * A mixture of experts in the second layer: top-2 of 4, both auxiliary losses at a weight that
     * shows. No jitter: like dropout masks, its noise is drawn per worker, so it differs between
     * the split and the whole batch by design.
     */
    static final ModelConfig MOE = MODEL.withChannelMixers(List.of(new MlpSpec(4), new MoeSpec(4, 48, 2, 0, 0.1, 0.01, 0)));
    static final int B = 8;
    static final int STEPS = 6;
    static final Synthetic.Examples EXAMPLES = Synthetic.associativeRecall(20, 32, B * STEPS * 2, 11);

    /** Batch p, the slice of replica {@code rank} of {@code world}. */
    static DataSource slice(int rank, int world) {
        int per = B / world;
        return DataSource.indexed(p -> EXAMPLES.batch((int) (B * p + rank * per), (int) (B * p + rank * per + per)));
    }

    static DataParallel replicas(ModelConfig model, TrainConfig train, int n) {
        return new DataParallel(n, (rank, sync) -> {
            Device dev = CpuDevice.open(1);
            Gpt m = new Gpt(model, dev, 5);
            return new DataParallel.Replica(dev, m, new Trainer(m, train, sync));
        });
    }

    static TrainConfig withGradAccum(int micro) {
        return new TrainConfig(TRAIN.seed(), TRAIN.lr(), TRAIN.minLr(), TRAIN.warmupSteps(), TRAIN.maxSteps(), TRAIN.weightDecay(),
                TRAIN.beta1(), TRAIN.beta2(), TRAIN.eps(), TRAIN.gradClip(), micro, TRAIN.batchTokens(), TRAIN.logInterval(),
                TRAIN.checkpointInterval(), TRAIN.keepCheckpoints());
    }

    @Test
    void replicasOnSlicesEqualOneTrainerOnTheWholeBatch() {
        replicasEqualOneTrainer(MODEL, TRAIN);
    }

    /**
     * The auxiliary losses are token means over the step's global batch: 2 or 4 workers on slices
     * of each micro-batch train as one worker on the whole micro-batch, with one micro-batch or two.
     */
    @Test
    void mixtureOfExpertsReplicasEqualOneTrainerWithAndWithoutGradientAccumulation() {
        for (int micro : new int[] {1, 2}) {
            List<StepResult> single = replicasEqualOneTrainer(MOE, withGradAccum(micro));
            assertEquals(java.util.Set.of("moe_balance_loss", "moe_dropped_fraction", "moe_load_imbalance", "moe_z_loss"),
                    single.get(0).metrics().keySet());
        }
    }

    /** Every replica inserts the same summed gradient, so M-FAC's windows, Gram matrices and momenta stay bit-identical too. */
    @Test
    void mfacReplicasKeepIdenticalWindowsAndEqualOneTrainer() {
        TrainConfig mfac = TRAIN.withOptimizer(org.kindling.models.config.OptimizerConfig.mfac(4, 1e-4, 0.5));
        replicasEqualOneTrainer(MODEL, mfac);
        try (DataParallel dp = replicas(MODEL, mfac, 2)) {
            List<DataSource> data = List.of(slice(0, 2), slice(1, 2));
            for (int s = 0; s < STEPS; s++) {
                dp.step(data);
            }
            var first = dp.replicas().get(0).trainer().optimizer().state();
            var second = dp.replicas().get(1).trainer().optimizer().state();
            assertEquals(List.of("mfac.window", "mfac.gram", "mfac.momentum"), List.copyOf(first.keySet()));
            first.forEach((name, t) -> assertArrayEquals(t.read(), second.get(name).read(), name));
        }
    }

    /** Runs one trainer on whole batches and 2 and 4 replicas on slices, comparing them; returns the single trainer's steps. */
    private static List<StepResult> replicasEqualOneTrainer(ModelConfig model, TrainConfig train) {
        float[] single;
        List<StepResult> singleSteps = new ArrayList<>();
        try (Device dev = CpuDevice.open(1); Gpt m = new Gpt(model, dev, 5); Trainer t = new Trainer(m, train)) {
            DataSource d = slice(0, 1);
            for (int s = 0; s < STEPS; s++) {
                singleSteps.add(t.step(d));
            }
            single = m.params().values().toFloatArray();
        }
        for (int n : new int[] {2, 4}) {
            try (DataParallel dp = replicas(model, train, n)) {
                List<DataSource> data = new ArrayList<>();
                for (int r = 0; r < n; r++) {
                    data.add(slice(r, n));
                }
                for (int s = 0; s < STEPS; s++) {
                    StepResult r = dp.step(data);
                    StepResult one = singleSteps.get(s);
                    String what = n + " replicas, step " + (s + 1);
                    assertEquals(one.loss(), r.loss(), 1e-5, what);
                    assertEquals((long) B * 32 * train.gradAccum(), r.tokens(), "tokens of all replicas");
                    assertEquals(one.metrics().keySet(), r.metrics().keySet(), what);
                    for (var e : one.metrics().entrySet()) {
                        assertEquals(e.getValue(), r.metrics().get(e.getKey()), 1e-6 * Math.max(1, Math.abs(e.getValue())),
                                what + ": " + e.getKey());
                    }
                }
                float[] w0 = dp.replicas().get(0).model().params().values().toFloatArray();
                for (DataParallel.Replica rep : dp.replicas()) {
                    assertArrayEquals(w0, rep.model().params().values().toFloatArray(), "replicas must stay bit-identical");
                }
                double maxDiff = 0;
                for (int i = 0; i < w0.length; i++) {
                    maxDiff = Math.max(maxDiff, Math.abs(w0[i] - single[i]));
                }
                // Only the order of fp32 sums differs from the single trainer.
                assertTrue(maxDiff < 1e-4, n + " replicas: max weight difference " + maxDiff);
            }
        }
        return singleSteps;
    }

    @Test
    void aFailingReplicaFailsTheStepWithItsOwnErrorAndNobodyWaits() {
        try (DataParallel dp = replicas(MODEL, TRAIN, 2)) {
            DataSource broken = DataSource.indexed(p -> {
                throw new IllegalStateException("replica 1 cannot read batch " + p);
            });
            long t0 = System.nanoTime();
            IllegalStateException e = assertThrows(IllegalStateException.class, () -> dp.step(List.of(slice(0, 2), broken)));
            assertEquals("replica 1 cannot read batch 0", e.getMessage());
            assertTrue((System.nanoTime() - t0) / 1e9 < 30);
        }
    }

    /** Work between steps (an evaluation) runs on every replica's thread at once, its results by rank. */
    @Test
    void onEachRunsEveryReplicaConcurrentlyAndReturnsResultsByRank() {
        try (DataParallel dp = replicas(MODEL, TRAIN, 3)) {
            java.util.concurrent.CyclicBarrier all = new java.util.concurrent.CyclicBarrier(3);
            List<String> out = dp.onEach(rank -> {
                try {
                    // Passes only if the three run at the same time.
                    all.await(30, java.util.concurrent.TimeUnit.SECONDS);
                } catch (Exception e) {
                    throw new IllegalStateException(e);
                }
                return rank + ":" + (rank == 0) + ":" + Thread.currentThread().getName().equals("kindling-replica");
            });
            assertEquals(List.of("0:true:false", "1:false:true", "2:false:true"), out);
            IllegalStateException e = assertThrows(IllegalStateException.class, () -> dp.onEach(rank -> {
                if (rank == 2) {
                    throw new IllegalStateException("replica 2 failed");
                }
                return rank;
            }));
            assertEquals("replica 2 failed", e.getMessage());
        }
    }

    @Test
    void sharedMemoryCollectivesGiveEveryReplicaTheSameAnswer() throws Exception {
        List<SharedMemorySync> group = SharedMemorySync.group(3, 60);
        java.util.concurrent.ExecutorService pool = java.util.concurrent.Executors.newFixedThreadPool(3);
        try {
            List<java.util.concurrent.Future<String>> results = new ArrayList<>();
            for (SharedMemorySync sync : group) {
                results.add(pool.submit(() -> {
                    long[] positions = sync.allGather(100L + sync.rank());
                    double[] v = {sync.rank(), 0.1};
                    sync.allReduceSum(v);
                    return java.util.Arrays.toString(positions) + " " + java.util.Arrays.toString(v);
                }));
            }
            for (java.util.concurrent.Future<String> f : results) {
                assertEquals("[100, 101, 102] [3.0, 0.30000000000000004]", f.get());
            }
        } finally {
            pool.shutdownNow();
        }
    }

    /**
     * Each replica's gradients are written by a "kernel" (a thread standing in for an asynchronous
     * device) after they were handed over: the sums hold the late values only because
     * finishGradients waits for the group's fence; a fence that never completes fails naming the group.
     */
    @Test
    void sharedMemorySyncReadsGradientsOnlyAfterTheirFenceIsDone() throws Exception {
        float[] expected = new float[10];
        for (int i = 0; i < expected.length; i++) {
            expected[i] = 10 + i + 20 + i;
        }
        for (String result : onGroup(2, 60, true)) {
            assertEquals(java.util.Arrays.toString(expected), result);
        }
        long t0 = System.nanoTime();
        for (String result : onGroup(2, 1, false)) {
            assertEquals("gradients of [a, b] not ready within 1000 ms: the kernels writing them have not finished", result);
        }
        assertTrue((System.nanoTime() - t0) / 1e9 < 30);
    }

    /** Per replica: the summed gradients, or the error of finishGradients; the fences complete only when {@code complete}. */
    private static List<String> onGroup(int replicas, long timeoutSeconds, boolean complete) throws Exception {
        List<SharedMemorySync> group = SharedMemorySync.group(replicas, timeoutSeconds);
        java.util.concurrent.ExecutorService pool = java.util.concurrent.Executors.newFixedThreadPool(2 * replicas);
        try {
            List<java.util.concurrent.Future<String>> results = new ArrayList<>();
            for (SharedMemorySync sync : group) {
                results.add(pool.submit(() -> {
                    Params.Builder b = new Params.Builder();
                    b.add("a", Init.zeros(), ParamGroup.DECAY, 2, 3);
                    b.add("b", Init.zeros(), ParamGroup.NO_DECAY, 4);
                    try (Device dev = CpuDevice.open(1); Params params = b.build(dev, 1)) {
                        CompletableFence ready = new CompletableFence();
                        sync.gradientsReady(params.list(), ready);
                        java.util.concurrent.Future<?> kernel = pool.submit(() -> {
                            Thread.sleep(300);
                            float[] g = new float[10];
                            for (int i = 0; i < g.length; i++) {
                                g[i] = (sync.rank() + 1) * 10 + i;
                            }
                            params.grads().copyFrom(g);
                            if (complete) {
                                ready.complete();
                            }
                            return null;
                        });
                        try {
                            sync.finishGradients(params);
                            return java.util.Arrays.toString(params.grads().toFloatArray());
                        } catch (IllegalStateException e) {
                            return e.getMessage();
                        } finally {
                            kernel.get();
                        }
                    }
                }));
            }
            List<String> out = new ArrayList<>();
            for (java.util.concurrent.Future<String> f : results) {
                out.add(f.get());
            }
            return out;
        } finally {
            pool.shutdownNow();
        }
    }
}
