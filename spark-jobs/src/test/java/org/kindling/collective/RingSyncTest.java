package org.kindling.collective;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
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
import org.kindling.models.train.GradientSync;
import org.kindling.models.train.StepResult;
import org.kindling.models.train.Trainer;
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
}
