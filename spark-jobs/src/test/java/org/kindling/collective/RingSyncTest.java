package org.kindling.collective;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.kindling.models.Gpt;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.Synthetic;
import org.kindling.models.nn.Init;
import org.kindling.models.nn.ParamGroup;
import org.kindling.models.nn.Params;
import org.kindling.models.train.GradientSync;
import org.kindling.models.train.StepResult;
import org.kindling.models.train.Trainer;
import org.kindling.ops.CompletableFence;
import org.kindling.ops.Device;
import org.kindling.ops.cpu.CpuDevice;

/** Data-parallel training over the ring equals one worker with the combined batch; replicas stay bit-identical. */
class RingSyncTest {
    static final ModelConfig MODEL = ModelConfig.gpt(20, 32, 2, 4, 2, 64, 4, 0.1, 0.02, 1e-5);
    static final int B = 4;
    static final int STEPS = 6;
    static final Synthetic.Examples EXAMPLES = Synthetic.associativeRecall(20, 32, 2 * B * STEPS, 11);

    record Run(float[] weights, List<StepResult> steps) {
    }

    @Test
    void twoWorkersWithBatchBEqualOneWorkerWithBatch2B() throws Exception {
        // Dropout masks differ by worker, so the comparison with one worker runs without dropout.
        TrainConfig cfg = new TrainConfig(5, 3e-3, 3e-4, 2, STEPS, 0.1, 0.9, 0.95, 1e-8, 1.0, 1, 4096, 1, 0, 1);
        ModelConfig noDropout = ModelConfig.gpt(20, 32, 2, 4, 2, 64, 4, 0, 0.02, 1e-5);
        assertEquals(0.0, noDropout.dropout());
        Run single = trainWith(noDropout, 0, 1, cfg, org.kindling.models.train.GradientSync.SINGLE);
        for (long bucket : new long[] {1024, RingSync.DEFAULT_BUCKET_BYTES}) {
            List<Run> ranks = RingTest.onRing(2, Duration.ofSeconds(60), ring -> {
                try (RingSync sync = new RingSync(ring, bucket)) {
                    return trainWith(noDropout, ring.rank(), 2, cfg, sync);
                }
            });
            assertArrayEquals(ranks.get(0).weights(), ranks.get(1).weights(), "replicas must stay bit-identical");
            for (int s = 0; s < STEPS; s++) {
                StepResult a = ranks.get(0).steps().get(s);
                StepResult b = ranks.get(1).steps().get(s);
                assertEquals(a.loss(), b.loss(), 0.0, "every rank reports the same mean loss");
                assertEquals(a.gradNorm(), b.gradNorm(), 0.0);
            }
            double maxDiff = 0;
            for (int i = 0; i < single.weights().length; i++) {
                maxDiff = Math.max(maxDiff, Math.abs(single.weights()[i] - ranks.get(0).weights()[i]));
            }
            // Only the order of fp32 sums differs; six AdamW steps of lr 3e-3 keep that far below one step's size.
            assertTrue(maxDiff < 1e-5, "bucket " + bucket + ": max weight difference " + maxDiff);
            for (int s = 0; s < STEPS; s++) {
                assertEquals(single.steps().get(s).loss(), ranks.get(0).steps().get(s).loss(), 1e-5);
                assertEquals(single.steps().get(s).tokens(), ranks.get(0).steps().get(s).tokens());
            }
        }
    }

    /** ZeRO-1 over the ring: each rank updates its shard and all-gathers the weights, with the bits of plain data parallelism. */
    @Test
    void zeroOneOverTheRingEqualsPlainDataParallelBitForBit() throws Exception {
        TrainConfig cfg = new TrainConfig(5, 3e-3, 3e-4, 2, STEPS, 0.1, 0.9, 0.95, 1e-8, 0.5, 1, 4096, 1, 0, 1);
        for (int world : new int[] {2, 3}) {
            List<Run> plain = RingTest.onRing(world, Duration.ofSeconds(60), ring -> {
                try (RingSync sync = new RingSync(ring, 1024)) {
                    return trainWith(MODEL, ring.rank(), world, cfg, sync);
                }
            });
            List<Run> zero = RingTest.onRing(world, Duration.ofSeconds(60), ring -> {
                try (RingSync sync = new RingSync(ring, 1024)) {
                    return trainWith(MODEL, ring.rank(), world, cfg.withZero(1), sync);
                }
            });
            for (int r = 0; r < world; r++) {
                assertArrayEquals(plain.get(0).weights(), zero.get(r).weights(), world + " ranks, rank " + r);
                for (int s = 0; s < STEPS; s++) {
                    assertEquals(plain.get(r).steps().get(s).loss(), zero.get(r).steps().get(s).loss(), 0.0);
                    assertEquals(plain.get(r).steps().get(s).gradNorm(), zero.get(r).steps().get(s).gradNorm(), 0.0);
                }
            }
        }
    }

    static Run trainWith(ModelConfig model, int rank, int world, TrainConfig cfg, org.kindling.models.train.GradientSync sync) {
        int per = 2 * B / world;
        DataSource data = DataSource.indexed(i -> {
            int p = (int) (i % STEPS);
            return EXAMPLES.batch(2 * B * p + rank * per, 2 * B * p + rank * per + per);
        });
        List<StepResult> steps = new ArrayList<>();
        try (Device dev = CpuDevice.open(1); Gpt gpt = new Gpt(model, dev, 5); Trainer t = new Trainer(gpt, cfg, sync)) {
            for (int i = 0; i < STEPS; i++) {
                steps.add(t.step(data));
            }
            return new Run(gpt.params().values().toFloatArray(), steps);
        }
    }

    @Test
    void workersDrawDifferentDropoutMasksButStayIdentical() throws Exception {
        TrainConfig cfg = new TrainConfig(5, 3e-3, 3e-4, 2, STEPS, 0.1, 0.9, 0.95, 1e-8, 1.0, 2, 4096, 1, 0, 1);
        List<Run> ranks = RingTest.onRing(2, Duration.ofSeconds(60), ring -> {
            try (RingSync sync = new RingSync(ring, 4096)) {
                return trainWith(MODEL, ring.rank(), 2, cfg, sync);
            }
        });
        assertArrayEquals(ranks.get(0).weights(), ranks.get(1).weights(), "replicas must stay bit-identical");
        assertTrue(ranks.get(0).steps().get(STEPS - 1).loss() < ranks.get(0).steps().get(0).loss());
    }

    /** Two parameters, 6 + 4 elements, gradients zero. */
    static Params twoParams(Device dev) {
        Params.Builder b = new Params.Builder();
        b.add("a", Init.zeros(), ParamGroup.DECAY, 2, 3);
        b.add("b", Init.zeros(), ParamGroup.NO_DECAY, 4);
        return b.build(dev, 1);
    }

    /** What a slow kernel on rank {@code rank} writes into the gradients. */
    static float[] lateGradients(int rank) {
        float[] g = new float[10];
        for (int i = 0; i < g.length; i++) {
            g[i] = (rank + 1) * 10 + i;
        }
        return g;
    }

    /**
     * A 4-byte bucket starts the all-reduce while the "kernel" (a thread standing in for an
     * asynchronous device) has not yet written the gradients: the sums hold the late values only
     * because the communication thread waits for the group's fence.
     */
    @Test
    void theRingReadsGradientsOnlyAfterTheirFenceIsDone() throws Exception {
        List<float[]> sums = RingTest.onRing(2, Duration.ofSeconds(60), ring -> {
            try (Device dev = CpuDevice.open(1); Params params = twoParams(dev); RingSync sync = new RingSync(ring, 4)) {
                CompletableFence ready = new CompletableFence();
                sync.gradientsReady(params.list(), ready);
                Thread kernel = new Thread(() -> {
                    try {
                        Thread.sleep(300);
                    } catch (InterruptedException e) {
                        return;
                    }
                    params.grads().copyFrom(lateGradients(ring.rank()));
                    ready.complete();
                });
                kernel.start();
                sync.finishGradients(params);
                kernel.join();
                return params.grads().toFloatArray();
            } catch (InterruptedException e) {
                throw new IllegalStateException(e);
            }
        });
        float[] expected = new float[10];
        for (int i = 0; i < expected.length; i++) {
            expected[i] = lateGradients(0)[i] + lateGradients(1)[i];
        }
        assertArrayEquals(expected, sums.get(0));
        assertArrayEquals(expected, sums.get(1));
    }

    @Test
    void aFenceThatNeverCompletesFailsNamingTheGroupWithinTheRingTimeout() throws Exception {
        List<String> errors = RingTest.onRing(2, Duration.ofSeconds(3), ring -> {
            try (Device dev = CpuDevice.open(1); Params params = twoParams(dev); RingSync sync = new RingSync(ring, 1 << 20)) {
                sync.gradientsReady(params.list(), new CompletableFence());
                long t0 = System.nanoTime();
                IllegalStateException e = assertThrows(IllegalStateException.class, () -> sync.finishGradients(params));
                assertTrue((System.nanoTime() - t0) / 1e9 < 30, "waited " + (System.nanoTime() - t0) / 1e9 + " s");
                return e.getMessage();
            }
        });
        for (String e : errors) {
            assertEquals("gradients of [a, b] not ready within 3000 ms: the kernels writing them have not finished", e);
        }
    }
}
