package org.kindling.models.channel;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.kindling.models.config.ConfigReader;
import org.kindling.models.config.LayerDefaults;
import org.kindling.models.nn.LayerContext;
import org.kindling.models.nn.Param;
import org.kindling.models.nn.Params;
import org.kindling.models.nn.StepContext;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;
import org.kindling.ops.cpu.CpuDevice;

/** The sparse FFN against a dense ReLU FFN and a per-token loop; decoding's gather; its seeds; its config. */
class SparseFfnTest {
    private final List<AutoCloseable> open = new ArrayList<>();
    private final Device dev = CpuDevice.open(2);

    @AfterEach
    void tearDown() throws Exception {
        for (int i = open.size() - 1; i >= 0; i--) {
            open.get(i).close();
        }
        dev.close();
    }

    private <T extends AutoCloseable> T keep(T t) {
        open.add(t);
        return t;
    }

    private static float[] uniform(long seed, int n, double scale) {
        SplittableRandom r = new SplittableRandom(seed);
        float[] x = new float[n];
        for (int i = 0; i < n; i++) {
            x[i] = (float) ((r.nextDouble() * 2 - 1) * scale);
        }
        return x;
    }

    private record Built(SparseFfn layer, Params params, StepContext step) {
    }

    private Built build(SparseFfnSpec spec, int c, long seed) {
        Params.Builder pb = new Params.Builder();
        StepContext step = keep(new StepContext());
        SparseFfn layer = (SparseFfn) keep(spec.build(new LayerContext(pb, dev, "layer", c, 0, 2, 0.3, 5, step)));
        Params params = keep(pb.build(dev, seed));
        params.values().copyFrom(uniform(seed + 1, params.count(), 0.3));
        return new Built(layer, params, step);
    }

    private Tensor input(long seed, int t, int c) {
        return keep(dev.allocate(DType.F32, t, c)).copyFrom(uniform(seed, t * c, 1.0));
    }

    private Tensor zeros(int t, int c) {
        Tensor z = keep(dev.allocate(DType.F32, t, c));
        dev.backend().fill(z, 0f);
        return z;
    }

    private static void assertClose(double[] expected, float[] actual, double rtol, String what) {
        double scale = 0;
        for (double e : expected) {
            scale = Math.max(scale, Math.abs(e));
        }
        assertTrue(scale > 0, what + " is all zero: the check would compare nothing");
        for (int i = 0; i < expected.length; i++) {
            if (Math.abs(expected[i] - actual[i]) > rtol * scale) {
                throw new AssertionError(what + "[" + i + "]: expected " + expected[i] + ", got " + actual[i]);
            }
        }
    }

    /**
     * With N = 1 every block is one unit, always chosen: a dense ReLU FFN y = ReLU(x·W1ᵀ + b1)·W2 + b2,
     * forward and backward, computed here in double, on soft and on quantised training passes.
     */
    @Test
    void oneUnitPerBlockIsADenseReluFfn() {
        int t = 13;
        int c = 20;
        int f = 36;
        for (double quantize : new double[] {0, 1}) {
            Built b = build(new SparseFfnSpec(f, 1, 5, 0.1, quantize), c, 3);
            SparseFfn s = b.layer();
            float[] w1 = s.fc.weight.value().toFloatArray();
            float[] b1 = s.fc.bias.value().toFloatArray();
            float[] w2 = s.proj.value().toFloatArray();
            float[] b2 = s.projBias.value().toFloatArray();
            Tensor x = input(4, t, c);
            float[] xs = x.toFloatArray();
            Tensor y = keep(dev.allocate(DType.F32, t, c));
            b.step().train(9, 1.0 / t, v -> { });
            s.forward(y, x);
            float[] dys = uniform(6, t * c, 1.0);
            Tensor dy = keep(dev.allocate(DType.F32, t, c)).copyFrom(dys);
            Tensor dx = zeros(t, c);
            b.params().zeroGrad();
            s.backward(dx, dy);

            double[] ye = new double[t * c];
            double[] dxe = new double[t * c];
            double[] dw1 = new double[f * c];
            double[] db1 = new double[f];
            double[] dw2 = new double[f * c];
            double[] db2 = new double[c];
            for (int i = 0; i < t; i++) {
                for (int u = 0; u < f; u++) {
                    double h = b1[u];
                    for (int q = 0; q < c; q++) {
                        h += (double) xs[i * c + q] * w1[u * c + q];
                    }
                    double r = Math.max(h, 0);
                    double dr = 0;
                    for (int q = 0; q < c; q++) {
                        ye[i * c + q] += r * w2[u * c + q];
                        dw2[u * c + q] += r * dys[i * c + q];
                        dr += (double) dys[i * c + q] * w2[u * c + q];
                    }
                    double dh = h > 0 ? dr : 0;
                    db1[u] += dh;
                    for (int q = 0; q < c; q++) {
                        dw1[u * c + q] += dh * xs[i * c + q];
                        dxe[i * c + q] += dh * w1[u * c + q];
                    }
                }
                for (int q = 0; q < c; q++) {
                    ye[i * c + q] += b2[q];
                    db2[q] += dys[i * c + q];
                }
            }
            String pass = quantize == 0 ? "soft pass: " : "quantised pass: ";
            assertClose(ye, y.toFloatArray(), 1e-5, pass + "y");
            assertClose(dxe, dx.toFloatArray(), 1e-5, pass + "dx");
            assertClose(dw1, s.fc.weight.grad().toFloatArray(), 1e-5, pass + "dW1");
            assertClose(db1, s.fc.bias.grad().toFloatArray(), 1e-5, pass + "db1");
            assertClose(dw2, s.proj.grad().toFloatArray(), 1e-5, pass + "dW2");
            assertClose(db2, s.projBias.grad().toFloatArray(), 1e-5, pass + "db2");
            for (Param p : b.params().list()) {
                if (p.name().contains("controller")) {
                    for (float g : p.grad().toFloatArray()) {
                        assertEquals(0f, g, pass + p.name() + ": a one-unit block's softmax is constant");
                    }
                }
            }
        }
    }

    /** Evaluation by a loop in double: per block the unit of the largest controller logit, its ReLU unit alone. */
    private static double[] evalLoop(SparseFfn s, SparseFfnSpec spec, float[] x, int t, int c) {
        int f = spec.dFf();
        int n = spec.block();
        int rank = spec.controllerRank();
        float[] w1 = s.fc.weight.value().toFloatArray();
        float[] b1 = s.fc.bias.value().toFloatArray();
        float[] w2 = s.proj.value().toFloatArray();
        float[] b2 = s.projBias.value().toFloatArray();
        float[] dw = s.down.weight.value().toFloatArray();
        float[] uw = s.up.weight.value().toFloatArray();
        float[] ub = s.up.bias.value().toFloatArray();
        double[] y = new double[t * c];
        for (int i = 0; i < t; i++) {
            double[] hid = new double[rank];
            for (int k = 0; k < rank; k++) {
                for (int q = 0; q < c; q++) {
                    hid[k] += (double) x[i * c + q] * dw[k * c + q];
                }
            }
            for (int blk = 0; blk < f / n; blk++) {
                int best = -1;
                double bestLogit = Double.NEGATIVE_INFINITY;
                for (int j = 0; j < n; j++) {
                    int u = blk * n + j;
                    double l = ub[u];
                    for (int k = 0; k < rank; k++) {
                        l += hid[k] * uw[u * rank + k];
                    }
                    if (l > bestLogit) {
                        bestLogit = l;
                        best = u;
                    }
                }
                double h = b1[best];
                for (int q = 0; q < c; q++) {
                    h += (double) x[i * c + q] * w1[best * c + q];
                }
                double r = Math.max(h, 0);
                for (int q = 0; q < c; q++) {
                    y[i * c + q] += r * w2[best * c + q];
                }
            }
            for (int q = 0; q < c; q++) {
                y[i * c + q] += b2[q];
            }
        }
        return y;
    }

    /** Decoding gathers the chosen units (fewer rows than N) and equals the masked dense evaluation and the loop. */
    @Test
    void decodingGatherEqualsTheMaskedDenseEvaluation() {
        int c = 48;
        SparseFfnSpec spec = new SparseFfnSpec(96, 8, 16, 0.1, 0.3);
        Built b = build(spec, c, 11);
        SparseFfn s = b.layer();
        for (int t : new int[] {7, 1, 8, 19}) {
            Tensor x = input(12 + t, t, c);
            Tensor dense = keep(dev.allocate(DType.F32, t, c));
            Tensor step = keep(dev.allocate(DType.F32, t, c));
            b.step().eval();
            s.forward(dense, x);
            s.forwardStep(step, x);
            double[] loop = evalLoop(s, spec, x.toFloatArray(), t, c);
            assertClose(loop, dense.toFloatArray(), 1e-5, t + " rows: the masked dense evaluation against the loop");
            assertClose(loop, step.toFloatArray(), 1e-5, t + " rows: decoding against the loop");
            float[] d = dense.toFloatArray();
            float[] g = step.toFloatArray();
            double[] asDouble = new double[d.length];
            for (int i = 0; i < d.length; i++) {
                asDouble[i] = d[i];
            }
            assertClose(asDouble, g, 1e-6, t + " rows: decoding against the masked dense evaluation");
        }
    }

    /** Decoding keeps nothing: a backward pending from a training forward is unchanged by a decoding step in between. */
    @Test
    void decodingLeavesAPendingBackwardIntact() {
        int t = 5;
        int c = 16;
        SparseFfnSpec spec = new SparseFfnSpec(32, 4, 8, 0.1, 0);
        float[][] grads = new float[2][];
        for (int run = 0; run < 2; run++) {
            Built b = build(spec, c, 21);
            Tensor x = input(22, t, c);
            Tensor y = keep(dev.allocate(DType.F32, t, c));
            b.step().train(3, 1.0 / t, v -> { });
            b.layer().forward(y, x);
            if (run == 1) {
                Tensor other = input(23, 3, c);
                b.layer().forwardStep(keep(dev.allocate(DType.F32, 3, c)), other);
            }
            Tensor dx = zeros(t, c);
            b.params().zeroGrad();
            b.layer().backward(dx, input(24, t, c));
            grads[run] = b.params().grads().toFloatArray();
        }
        assertArrayEquals(grads[0], grads[1]);
    }

    private float[] trainingOutput(SparseFfnSpec spec, long seed) {
        int t = 6;
        int c = 16;
        Built b = build(spec, c, 31);
        Tensor x = input(32, t, c);
        Tensor y = keep(dev.allocate(DType.F32, t, c));
        b.step().train(seed, 1.0 / t, v -> { });
        b.layer().forward(y, x);
        return y.toFloatArray();
    }

    /**
     * A soft pass has no noise, so every seed gives the same output; a quantised pass's Gumbel noise
     * is a function of the pass's seed: the same seed repeats the output bit for bit, another changes it.
     */
    @Test
    void theNoiseFollowsThePassSeed() {
        SparseFfnSpec soft = new SparseFfnSpec(32, 4, 8, 0.1, 0);
        assertArrayEquals(trainingOutput(soft, 7), trainingOutput(soft, 8), "a soft pass draws no noise");
        SparseFfnSpec hard = new SparseFfnSpec(32, 4, 8, 1, 1);
        assertArrayEquals(trainingOutput(hard, 7), trainingOutput(hard, 7), "same seed, quantised");
        assertFalse(Arrays.equals(trainingOutput(hard, 7), trainingOutput(hard, 8)), "another seed draws other noise");
    }

    /** Which passes are quantised is a pure function of (seed, layer), taken in the configured share. */
    @Test
    void theQuantisedShareIsDecidedByTheSeed() {
        int passes = 4000;
        for (double share : new double[] {0, 0.3, 1}) {
            int quantised = 0;
            for (long seed = 0; seed < passes; seed++) {
                boolean q = SparseFfn.quantisedPass(seed, 1, share);
                assertEquals(q, SparseFfn.quantisedPass(seed, 1, share), "seed " + seed + " decides the same twice");
                quantised += q ? 1 : 0;
            }
            assertEquals(share, (double) quantised / passes, 0.03, "share of quantised passes at quantize = " + share);
        }
        int differ = 0;
        for (long seed = 0; seed < 200; seed++) {
            differ += SparseFfn.quantisedPass(seed, 0, 0.5) != SparseFfn.quantisedPass(seed, 1, 0.5) ? 1 : 0;
        }
        assertTrue(differ > 50, "layers decide independently: " + differ + " of 200 differ");
    }

    @Test
    void specReadsItsKeysAndNamesBadOnes() {
        LayerDefaults d = new LayerDefaults(32, 4, 4, 4);
        SparseFfnSpec s = (SparseFfnSpec) ChannelMixers.read(new ConfigReader("m.yaml", "channel_mixer",
                Map.of("type", "sparse_ffn", "block", 16)), d);
        assertEquals(new SparseFfnSpec(128, 16, 64, 0.1, 0.3), s, "defaults: d_ff = mlp_ratio·C, rank 64, τ 0.1, quantize 0.3");
        assertEquals(s, ChannelMixers.read(new ConfigReader("m.yaml", "channel_mixer", s.toMap()), d), "round trip");
        assertEquals(List.of("type", "d_ff", "block", "controller_rank", "temperature", "quantize"), List.copyOf(s.toMap().keySet()));
        assertEquals((128 - 8) * (2L * 32 + 1), s.inactiveParameters(32), "15 of each 16 units unused");
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> ChannelMixers.read(
                new ConfigReader("m.yaml", "channel_mixer", Map.of("type", "sparse_ffn", "d_ff", 96, "block", 10)), d));
        assertEquals("m.yaml: channel_mixer.block = 10 must divide d_ff = 96", e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> ChannelMixers.read(
                new ConfigReader("m.yaml", "channel_mixer", Map.of("type", "sparse_ffn", "quantize", 1.5)), d));
        assertEquals("m.yaml: channel_mixer.quantize must be in [0, 1], got 1.5", e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> ChannelMixers.read(
                new ConfigReader("m.yaml", "channel_mixer", Map.of("type", "sparse_ffn", "temperature", 0)), d));
        assertEquals("m.yaml: channel_mixer.temperature must be a finite number > 0, got 0.0", e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> ChannelMixers.read(
                new ConfigReader("m.yaml", "channel_mixer", Map.of("type", "sparse_ffn", "blocks", 4)), d));
        assertTrue(e.getMessage().contains("blocks"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> new SparseFfnSpec(96, 7, 64, 0.1, 0.3));
        assertEquals("sparse_ffn block = 7 must divide d_ff = 96", e.getMessage());
    }
}
