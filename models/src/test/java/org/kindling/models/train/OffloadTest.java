package org.kindling.models.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.kindling.models.Gpt;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.Synthetic;
import org.kindling.models.nn.Params;
import org.kindling.ops.Device;
import org.kindling.ops.cpu.CpuDevice;

/** AdamW with its moments in host memory ({@code offload.optimizer_state: host}) against AdamW on the device. */
class OffloadTest {
    private static final ModelConfig MODEL = ModelConfig.gpt(20, 32, 2, 4, 2, 64, 4, 0, 0.02, 1e-5);
    private static final TrainConfig TRAIN = new TrainConfig(7, 3e-3, 3e-4, 2, 10, 0.1, 0.9, 0.95, 1e-8, 1.0, 1, 512, 5, 0, 2);

    /**
     * Buckets of 7 floats cut through every parameter group and parameter: the same random gradients give
     * bit-identical weights and moments after every step, and the device holds two buckets only.
     */
    @Test
    void offloadedMomentsEqualDeviceMomentsBitForBit() {
        try (Device dev = CpuDevice.open(1); Gpt a = new Gpt(MODEL, dev, 3); Gpt b = new Gpt(MODEL, dev, 3);
             AdamWOptimizer onDevice = new AdamWOptimizer(a.params(), TRAIN);
             AdamWOptimizer offloaded = new AdamWOptimizer(b.params(), TRAIN.withOffload(true), 7)) {
            Params pa = a.params();
            Params pb = b.params();
            assertTrue(pa.segments().size() > 1, "the test model has several parameter groups");
            SplittableRandom rnd = new SplittableRandom(11);
            for (int step = 0; step < 4; step++) {
                float[] g = new float[pa.count()];
                for (int i = 0; i < g.length; i++) {
                    g[i] = (float) rnd.nextGaussian();
                }
                pa.grads().copyFrom(g);
                pb.grads().copyFrom(g);
                onDevice.step(pa, step, 1e-2f, 0.5f);
                offloaded.step(pb, step, 1e-2f, 0.5f);
                assertArrayEquals(pa.values().toFloatArray(), pb.values().toFloatArray(), "weights after step " + (step + 1));
            }
            Map<String, StateTensor> want = onDevice.state();
            Map<String, StateTensor> got = offloaded.state();
            assertEquals(List.copyOf(want.keySet()), List.copyOf(got.keySet()));
            want.forEach((name, t) -> {
                assertArrayEquals(t.shape(), got.get(name).shape(), name);
                assertArrayEquals(t.read(), got.get(name).read(), name);
            });
            assertEquals(2L * 7 * Float.BYTES, offloaded.memoryBytes());
            assertEquals(2L * pa.count() * Float.BYTES, offloaded.hostBytes());
            assertEquals(onDevice.memoryBytes(), offloaded.hostBytes());
            assertTrue(offloaded.describe().contains("in host memory, streamed through"), offloaded.describe());
        }
    }

    /** A whole run: the same losses and weights bit for bit with the moments on the device or in host memory. */
    @Test
    void aTrainerWithOffloadedMomentsTrainsBitIdentically() {
        float[][] weights = new float[2][];
        double[][] losses = new double[2][6];
        for (int run = 0; run < 2; run++) {
            DataSource data = Synthetic.source(Synthetic.associativeRecall(20, 32, 200, 5), 8);
            try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(MODEL, dev, 1);
                 Trainer t = new Trainer(model, TRAIN.withOffload(run == 1))) {
                for (int s = 0; s < losses[run].length; s++) {
                    losses[run][s] = t.step(data).loss();
                }
                weights[run] = model.params().values().toFloatArray();
            }
        }
        assertArrayEquals(losses[0], losses[1]);
        assertArrayEquals(weights[0], weights[1]);
    }
}
