package org.kindling.models.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.kindling.models.Gpt;
import org.kindling.models.channel.MlpSpec;
import org.kindling.models.channel.MoeSpec;
import org.kindling.models.channel.SparseFfnSpec;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.RunConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.Synthetic;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.nn.Precision;
import org.kindling.ops.Device;
import org.kindling.ops.cpu.CpuDevice;
import org.kindling.ops.reference.ReferenceDevice;

/** {@code precision: bf16}: bf16 GEMM operands, fp32 accumulation, master weights and optimizer state. */
class MixedPrecisionTest {
    private static final ModelConfig MODEL = ModelConfig.gpt(20, 32, 2, 4, 2, 64, 4, 0, 0.02, 1e-5);

    private static TrainConfig train(Precision p) {
        return new TrainConfig(7, 3e-3, 3e-4, 3, 12, 0.1, 0.9, 0.95, 1e-8, 1.0, 1, 512, 5, 0, 2).withPrecision(p);
    }

    private static DataSource data() {
        return Synthetic.source(Synthetic.associativeRecall(20, 32, 256, 5), 8);
    }

    private static List<Double> losses(ModelConfig model, Precision p, int steps) {
        List<Double> out = new ArrayList<>();
        try (Device dev = CpuDevice.open(2); Gpt m = new Gpt(model, dev, 7); Trainer t = new Trainer(m, train(p))) {
            DataSource d = data();
            for (int i = 0; i < steps; i++) {
                out.add(t.step(d).loss());
            }
        }
        return out;
    }

    /**
     * The bf16 golden trajectory: the model, seed and data of TrainerTest's fp32 golden. Its
     * tolerance, 3e-6 relative, covers the GEMM implementations' fp32 summation orders but not
     * the up to 4.5e-5 by which these losses differ from the fp32 golden.
     */
    static final double[] GOLDEN_BF16 = {3.0319905281066895, 2.9900310039520264, 2.9468977451324463, 2.903900623321533,
        2.8525493144989014, 2.7999017238616943, 2.7713847160339355, 2.745413303375244};
    private static final double GOLDEN_TOLERANCE = 3e-6;

    @Test
    void goldenBf16LossTrajectory() {
        List<Double> got = losses(MODEL, Precision.BF16, GOLDEN_BF16.length);
        double apart = 0;
        for (int i = 0; i < GOLDEN_BF16.length; i++) {
            assertEquals(GOLDEN_BF16[i], got.get(i), GOLDEN_TOLERANCE * GOLDEN_BF16[i], "loss at step " + (i + 1) + " of " + got);
            apart = Math.max(apart, Math.abs(GOLDEN_BF16[i] - TrainerTest.GOLDEN[i]) / GOLDEN_BF16[i]);
        }
        assertTrue(apart > 5 * GOLDEN_TOLERANCE, "the bf16 golden must tell bf16 from fp32: at most " + apart + " apart");
    }

    /**
     * bf16 rounding (8 mantissa bits, relative error ≤ 2^-9 per operand) moves each loss of this
     * model by about 3e-5 relative; the bound is 1e-3 relative, and the run still learns. The losses must differ from fp32's, or the
     * GEMMs did not take bf16 operands.
     */
    @Test
    void bf16TracksTheFp32TrajectoryAndLearns() {
        List<Double> fp32 = losses(MODEL, Precision.FP32, 8);
        List<Double> bf16 = losses(MODEL, Precision.BF16, 8);
        for (int i = 0; i < fp32.size(); i++) {
            assertEquals(fp32.get(i), bf16.get(i), 1e-3 * fp32.get(i), "step " + (i + 1) + ": fp32 " + fp32 + ", bf16 " + bf16);
        }
        assertNotEquals(fp32, bf16);
        assertTrue(bf16.get(7) < bf16.get(0) - 0.1, "bf16 losses " + bf16);
    }

    /** The experts' grouped GEMMs and the router's Linear run in bf16 too. */
    @Test
    void mixtureOfExpertsTrainsInBf16() {
        ModelConfig moe = MODEL.withChannelMixers(List.of(new MlpSpec(4), new MoeSpec(4, 64, 1, 0, 0.01, 0.001, 0)));
        List<Double> fp32 = losses(moe, Precision.FP32, 6);
        List<Double> bf16 = losses(moe, Precision.BF16, 6);
        for (int i = 0; i < fp32.size(); i++) {
            assertEquals(fp32.get(i), bf16.get(i), 1e-3 * fp32.get(i), "step " + (i + 1) + ": fp32 " + fp32 + ", bf16 " + bf16);
        }
        assertNotEquals(fp32, bf16);
        assertTrue(bf16.get(5) < bf16.get(0), "bf16 losses " + bf16);
    }

    /** The sparse FFN's GEMMs (W1, W2 and the controller's) run in bf16 too; soft passes, so no choice flips on rounding. */
    @Test
    void sparseFfnTrainsInBf16() {
        ModelConfig sparse = MODEL.withChannelMixers(List.of(new SparseFfnSpec(128, 8, 16, 0.5, 0), new MlpSpec(4)));
        List<Double> fp32 = losses(sparse, Precision.FP32, 6);
        List<Double> bf16 = losses(sparse, Precision.BF16, 6);
        for (int i = 0; i < fp32.size(); i++) {
            assertEquals(fp32.get(i), bf16.get(i), 1e-3 * fp32.get(i), "step " + (i + 1) + ": fp32 " + fp32 + ", bf16 " + bf16);
        }
        assertNotEquals(fp32, bf16);
        assertTrue(bf16.get(5) < bf16.get(0), "bf16 losses " + bf16);
    }

    /**
     * Evaluation reads the same bf16 operands: logits within bf16 rounding of the fp32 ones (the
     * logits are O(0.1) here, so 2e-3 absolute is several bf16 ulps of every product term), not
     * equal to them; switching back to fp32 frees the shadow weights and gives the fp32 logits again.
     */
    @Test
    void logitsUnderBf16StayCloseAndFp32FreesTheShadow() {
        TokenBatch batch = TokenBatch.single(new int[] {1, 5, 7, 3, 9, 2});
        try (Device dev = CpuDevice.open(1); Gpt m = new Gpt(MODEL, dev, 7)) {
            float[] fp32 = m.logits(batch).toFloatArray();
            long live = dev.liveBytes();
            m.params().setPrecision(Precision.BF16);
            float[] bf16 = m.logits(batch).toFloatArray();
            assertEquals(fp32.length, bf16.length);
            double maxDiff = 0;
            for (int i = 0; i < fp32.length; i++) {
                maxDiff = Math.max(maxDiff, Math.abs(fp32[i] - bf16[i]));
            }
            assertTrue(maxDiff > 0 && maxDiff < 2e-3, "max |fp32 - bf16| logit difference " + maxDiff);
            m.params().setPrecision(Precision.FP32);
            assertTrue(dev.liveBytes() < live + (long) 2 * m.params().count(), "the bf16 shadow is freed");
            assertArrayEquals(fp32, m.logits(batch).toFloatArray());
        }
    }

    @Test
    void sameSeedGivesBitIdenticalBf16Runs() {
        assertEquals(losses(MODEL, Precision.BF16, 4), losses(MODEL, Precision.BF16, 4));
    }

    @Test
    void theReferenceDeviceRefusesBf16NamingPrecision() {
        try (Device dev = ReferenceDevice.open(); Gpt m = new Gpt(MODEL, dev, 7)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> new Trainer(m, train(Precision.BF16)));
            assertTrue(e.getMessage().startsWith("precision: bf16 is not modelled on the reference device"), e.getMessage());
        }
    }

    @Test
    void precisionIsATrainKeySetByName(@TempDir Path dir) throws java.io.IOException {
        Path file = dir.resolve("m.yaml");
        Files.writeString(file, "vocab: 10\nd_model: 8\nn_layer: 2\nn_head: 2\nmax_seq: 16\n");
        assertEquals(Precision.FP32, RunConfig.load(file).train().precision());
        RunConfig bf16 = RunConfig.load(file, Map.of("precision", "bf16"));
        assertEquals(Precision.BF16, bf16.train().precision());
        assertEquals(bf16, RunConfig.fromMap(bf16.toMap(), "resolved"));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> RunConfig.load(file, Map.of("precision", "fp16")));
        assertTrue(e.getMessage().endsWith("train.precision must be fp32 or bf16, got 'fp16'"), e.getMessage());
    }
}
