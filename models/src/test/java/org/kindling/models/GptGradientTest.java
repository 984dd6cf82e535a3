package org.kindling.models;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.kindling.models.channel.MlpSpec;
import org.kindling.models.channel.MoeSpec;
import org.kindling.models.channel.SparseFfnSpec;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.nn.Param;
import org.kindling.ops.Device;
import org.kindling.ops.cpu.CpuDevice;
import org.kindling.ops.reference.ReferenceDevice;

/**
 * End to end through a 2-layer model (embeddings, dropout, blocks, final norm, tied head,
 * cross-entropy over a packed batch with a loss mask): double-precision finite differences of
 * every parameter on the fp64 reference device, and the fp32 CPU backend's gradients against the
 * reference device's for the same weights.
 */
class GptGradientTest {
    private static final int[] TOKENS = {3, 16, 0, 5, 5, 9, 1, 2, 11, 7, 4};

    private static TokenBatch batch() {
        boolean[] mask = new boolean[TOKENS.length];
        Arrays.fill(mask, true);
        mask[4] = false;
        return new TokenBatch(TOKENS, new int[] {0, 1, 6, 11}, mask);
    }

    private static ModelConfig config(double dropout) {
        return ModelConfig.gpt(17, 8, 2, 2, 1, 16, 2, dropout,
                0.2, 1e-5);
    }

    /** The model's own initialization plus noise, rounded to fp32 so every device starts from the same weights. */
    private static void perturb(Gpt model) {
        float[] v = model.params().values().toFloatArray();
        double[] noise = GradCheck.uniform(7, v.length, 0.1);
        for (int i = 0; i < v.length; i++) {
            v[i] += (float) noise[i];
        }
        model.params().values().copyFrom(v);
    }

    @Test
    void twoLayerModelOnAVarlenBatchWithALossMask() {
        check(0, false);
    }

    @Test
    void withDropoutInTrainingMode() {
        // The masks are a function of the seed, so the loss stays a deterministic function of the weights.
        check(0.25, true);
    }

    /** A dropless top-2 mixture of experts in the second layer (auxiliary losses off: the probe is the LM loss). */
    @Test
    void withAMixtureOfExpertsLayer() {
        check(config(0).withChannelMixers(List.of(new MlpSpec(2), new MoeSpec(3, 10, 2, 0, 0, 0, 0))), true);
    }

    /** A sparse FFN in the first layer on a soft training pass (its Gumbel noise fixed by the pass's seed). */
    @Test
    void withASparseFfnLayer() {
        check(config(0).withChannelMixers(List.of(new SparseFfnSpec(16, 4, 3, 0.5, 0), new MlpSpec(2))), true);
    }

    private static void check(double dropout, boolean training) {
        check(config(dropout), training);
    }

    private static void check(ModelConfig cfg, boolean training) {
        TokenBatch batch = batch();
        try (Device dev = ReferenceDevice.open(); Gpt model = new Gpt(cfg, dev, 5)) {
            if (training) {
                model.train(42, 1.0 / batch.size(), v -> { });
            } else {
                model.eval();
            }
            perturb(model);
            List<GradCheck.Probe> probes = new ArrayList<>();
            for (Param p : model.params().list()) {
                probes.add(new GradCheck.Probe(p.name(), p.value(), p.grad()));
            }
            GradCheck.check("gpt", () -> model.forward(batch, 0f), () -> {
                model.params().zeroGrad();
                model.forward(batch, 1f);
                model.backward();
            }, probes);
        }
    }

    @Test
    void cpuGradientsMatchTheReferenceDevice() {
        TokenBatch batch = batch();
        try (Device cpu = CpuDevice.open(2); Device ref = ReferenceDevice.open(); Gpt onCpu = new Gpt(config(0.25), cpu, 5);
             Gpt onRef = new Gpt(config(0.25), ref, 5)) {
            double[] loss = new double[2];
            int i = 0;
            for (Gpt m : List.of(onCpu, onRef)) {
                m.train(42, 1.0 / batch.size(), v -> { });
                perturb(m);
                m.params().zeroGrad();
                loss[i++] = m.forward(batch, 1f);
                m.backward();
            }
            assertEquals(loss[1], loss[0], 1e-5 * Math.abs(loss[1]), "summed loss");
            for (Param p : onRef.params().list()) {
                double[] want = p.grad().toDoubleArray();
                float[] got = onCpu.params().get(p.name()).grad().toFloatArray();
                double scale = 0;
                for (double w : want) {
                    scale = Math.max(scale, Math.abs(w));
                }
                assertTrue(scale > 0, p.name() + " has no gradient: the check would compare nothing");
                for (int j = 0; j < want.length; j++) {
                    // fp32 kernels against fp64: a few ulps of the tensor's largest gradient, summed over tokens.
                    assertEquals(want[j], got[j], 1e-5 * scale + 1e-7, p.name() + "[" + j + "]");
                }
            }
        }
    }
}
