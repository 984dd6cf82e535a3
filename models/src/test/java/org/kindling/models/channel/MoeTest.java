package org.kindling.models.channel;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.kindling.models.config.ConfigReader;
import org.kindling.models.config.LayerDefaults;
import org.kindling.models.nn.LayerContext;
import org.kindling.models.nn.Params;
import org.kindling.models.nn.StepContext;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Reference;
import org.kindling.ops.Tensor;
import org.kindling.ops.cpu.CpuDevice;

/** The mixture of experts against the dense MLP and a plain per-token loop; the capacity rule; its config. */
class MoeTest {
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

    /** A layer of its own with its parameters built and redrawn from {@code seed}. */
    private record Built(ChannelMixer layer, Params params, StepContext step) {
    }

    private Built build(ChannelSpec spec, int c, long seed) {
        Params.Builder pb = new Params.Builder();
        StepContext step = keep(new StepContext());
        ChannelMixer layer = keep(spec.build(new LayerContext(pb, dev, "layer", c, 0, 2, 0.3, 5, step)));
        Params params = keep(pb.build(dev, seed));
        params.values().copyFrom(uniform(seed + 1, params.count(), 0.3));
        return new Built(layer, params, step);
    }

    private Tensor zeros(int t, int c) {
        Tensor z = keep(dev.allocate(DType.F32, t, c));
        dev.backend().fill(z, 0f);
        return z;
    }

    private Tensor input(long seed, int t, int c) {
        return keep(dev.allocate(DType.F32, t, c)).copyFrom(uniform(seed, t * c, 1.0));
    }

    @Test
    void oneExpertEqualsTheDenseMlpWithoutBiases() {
        int t = 97;
        int c = 59;
        Built moe = build(new MoeSpec(1, 2 * c, 1, 0, 0, 0, 0), c, 3);
        Built mlp = build(new MlpSpec(2, false), c, 4);
        Mlp dense = (Mlp) mlp.layer();
        Moe mixture = (Moe) moe.layer();
        dense.fc.weight.value().copyFrom(mixture.fc.value().toFloatArray());
        dense.proj.weight.value().copyFrom(mixture.proj.value().toFloatArray());
        Tensor x = input(5, t, c);
        Tensor y1 = keep(dev.allocate(DType.F32, t, c));
        Tensor y2 = keep(dev.allocate(DType.F32, t, c));
        moe.step().train(1, 1.0 / t, v -> { });
        moe.layer().forward(y1, x);
        mlp.layer().forward(y2, x);
        assertArrayEquals(y2.toFloatArray(), y1.toFloatArray(), "outputs: one expert with probability 1 is the MLP");
        Tensor dy = input(6, t, c);
        Tensor dx1 = zeros(t, c);
        Tensor dx2 = zeros(t, c);
        moe.params().zeroGrad();
        mlp.params().zeroGrad();
        moe.layer().backward(dx1, dy);
        mlp.layer().backward(dx2, dy);
        assertClose(dx2.toFloatArray(), dx1.toFloatArray(), 1e-6, "input gradient");
        assertClose(dense.fc.weight.grad().toFloatArray(), mixture.fc.grad().toFloatArray(), 1e-6, "fc gradient");
        assertClose(dense.proj.weight.grad().toFloatArray(), mixture.proj.grad().toFloatArray(), 1e-6, "proj gradient");
    }

    private static void assertClose(float[] expected, float[] actual, double rtol, String what) {
        double scale = 0;
        for (float e : expected) {
            scale = Math.max(scale, Math.abs(e));
        }
        for (int i = 0; i < expected.length; i++) {
            if (Math.abs(expected[i] - actual[i]) > rtol * scale) {
                throw new AssertionError(what + "[" + i + "]: expected " + expected[i] + ", got " + actual[i]);
            }
        }
    }

    /**
     * The layer's output by a plain loop over tokens in double: softmax router, top-k, each chosen
     * expert's MLP, and the capacity rule (an expert keeps its first {@code cap} entries in token
     * order; cap ≤ 0: all). Returns y [T·C] and sets dropped[0] to the dropped entries.
     */
    private static double[] perTokenLoop(Moe m, MoeSpec spec, float[] x, int t, int c, int cap, int[] dropped) {
        int e = spec.experts();
        int h = spec.hidden();
        float[] wr = m.routerWeight().toFloatArray();
        float[] fc = m.fc.value().toFloatArray();
        float[] proj = m.proj.value().toFloatArray();
        double[] y = new double[t * c];
        int[] used = new int[e];
        for (int i = 0; i < t; i++) {
            double[] logits = new double[e];
            for (int j = 0; j < e; j++) {
                for (int q = 0; q < c; q++) {
                    logits[j] += (double) x[i * c + q] * wr[j * c + q];
                }
            }
            double[] p = Reference.softmax(logits, 1, e);
            boolean[] taken = new boolean[e];
            for (int choice = 0; choice < spec.k(); choice++) {
                int best = -1;
                for (int j = 0; j < e; j++) {
                    if (!taken[j] && (best < 0 || p[j] > p[best])) {
                        best = j;
                    }
                }
                taken[best] = true;
                if (cap > 0 && used[best]++ >= cap) {
                    dropped[0]++;
                    continue;
                }
                double[] hid = new double[h];
                for (int u = 0; u < h; u++) {
                    for (int q = 0; q < c; q++) {
                        hid[u] += (double) x[i * c + q] * fc[(best * h + u) * c + q];
                    }
                }
                double[] g = Reference.gelu(hid);
                for (int q = 0; q < c; q++) {
                    double s = 0;
                    for (int u = 0; u < h; u++) {
                        s += g[u] * proj[(best * c + q) * h + u];
                    }
                    y[i * c + q] += p[best] * s;
                }
            }
        }
        return y;
    }

    private void checkAgainstLoop(MoeSpec spec, int t, int c, long seed) {
        checkAgainstLoop(spec, t, c, seed, true);
    }

    /** Checks a training pass (capacity applies) or an evaluation pass (every entry computed). */
    private void checkAgainstLoop(MoeSpec spec, int t, int c, long seed, boolean training) {
        Built b = build(spec, c, seed);
        Moe m = (Moe) b.layer();
        Tensor x = input(seed + 2, t, c);
        Tensor y = keep(dev.allocate(DType.F32, t, c));
        if (training) {
            b.step().train(seed, 1.0 / t, v -> { });
        }
        m.forward(y, x);
        int cap = spec.dropless() || !training ? 0 : Moe.capacity(spec.capacityFactor(), t, spec.k(), spec.experts());
        int[] dropped = {0};
        double[] expected = perTokenLoop(m, spec, x.toFloatArray(), t, c, cap, dropped);
        float[] actual = y.toFloatArray();
        double scale = 0;
        for (double v : expected) {
            scale = Math.max(scale, Math.abs(v));
        }
        for (int i = 0; i < expected.length; i++) {
            // fp32 GEMMs over C and H terms against the double loop.
            if (Math.abs(expected[i] - actual[i]) > 1e-5 * scale) {
                throw new AssertionError(spec + " y[" + i / c + ", " + i % c + "]: loop " + expected[i] + ", layer " + actual[i]);
            }
        }
        if (!training) {
            assertTrue(b.step().metrics().isEmpty(), "evaluation reports nothing");
            return;
        }
        Map<String, Double> metrics = b.step().metrics().values();
        assertEquals((double) dropped[0] / (t * spec.k()), metrics.get(MoeSpec.DROPPED_FRACTION), 1e-15, spec + " dropped fraction");
        if (!spec.dropless()) {
            assertTrue(dropped[0] > 0, spec + ": the case should drop entries");
        }
    }

    @Test
    void droplessEqualsAPerTokenLoop() {
        checkAgainstLoop(new MoeSpec(5, 40, 1, 0, 0.01, 0.001, 0), 97, 59, 11);
        checkAgainstLoop(new MoeSpec(3, 17, 2, 0, 0.01, 0.001, 0), 1025, 24, 12);
        checkAgainstLoop(new MoeSpec(8, 9, 2, 0, 0.01, 0.001, 0), 1, 59, 13);
    }

    @Test
    void capacityDropsExactlyTheEntriesPastEachExpertsCapacity() {
        checkAgainstLoop(new MoeSpec(5, 40, 1, 1.0, 0.01, 0.001, 0), 97, 59, 14);
        checkAgainstLoop(new MoeSpec(3, 17, 2, 0.5, 0.01, 0.001, 0), 1025, 24, 15);
        checkAgainstLoop(new MoeSpec(4, 8, 1, 1.25, 0.01, 0.001, 0), 33, 16, 16);
    }

    /** Capacity is a training device: evaluation computes every entry, so no token depends on its batch. */
    @Test
    void evaluationComputesEveryEntryUnderACapacity() {
        checkAgainstLoop(new MoeSpec(3, 17, 2, 0.5, 0.01, 0.001, 0.1), 97, 24, 17, false);
    }

    @Test
    void everyTokenOnOneExpertKeepsOnlyTheFirstCapacityTokens() {
        int t = 8;
        int c = 4;
        MoeSpec spec = new MoeSpec(4, 6, 1, 1.0, 0.01, 0.001, 0);
        Built b = build(spec, c, 21);
        Moe m = (Moe) b.layer();
        // The router sends every token with a positive first channel to expert 0.
        float[] wr = new float[4 * c];
        wr[0] = 10;
        m.routerWeight().copyFrom(wr);
        float[] xs = uniform(22, t * c, 1.0);
        for (int i = 0; i < t; i++) {
            xs[i * c] = 1 + i;
        }
        Tensor x = keep(dev.allocate(DType.F32, t, c)).copyFrom(xs);
        Tensor y = keep(dev.allocate(DType.F32, t, c));
        b.step().train(1, 1.0 / t, v -> { });
        m.forward(y, x);
        float[] out = y.toFloatArray();
        int cap = Moe.capacity(1.0, t, 1, 4);
        assertEquals(2, cap);
        for (int i = 0; i < t; i++) {
            boolean zero = true;
            for (int q = 0; q < c; q++) {
                zero &= out[i * c + q] == 0f;
            }
            assertEquals(i >= cap, zero, "token " + i + (i >= cap ? " is past expert 0's capacity" : " fits"));
        }
        Map<String, Double> metrics = b.step().metrics().values();
        assertEquals(6.0 / 8, metrics.get(MoeSpec.DROPPED_FRACTION));
        assertEquals(4.0, metrics.get(MoeSpec.LOAD_IMBALANCE), 1e-12, "all load on one of 4 experts");
    }

    @Test
    void specsReadTheirKeysAndNameBadOnes() {
        LayerDefaults d = new LayerDefaults(32, 4, 4, 4);
        MoeSpec s = (MoeSpec) ChannelMixers.read(new ConfigReader("m.yaml", "channel_mixer",
                Map.of("type", "moe", "experts", 4, "k", 2, "capacity_factor", 1.25)), d);
        assertEquals(new MoeSpec(4, 128, 2, 1.25, 0.01, 0.001, 0), s);
        assertEquals(s, ChannelMixers.read(new ConfigReader("m.yaml", "channel_mixer", s.toMap()), d), "round trip");
        assertEquals((4 - 2) * 2L * 128 * 32, s.inactiveParameters(32));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> ChannelMixers.read(
                new ConfigReader("m.yaml", "channel_mixer", Map.of("type", "moe", "experts", 2, "k", 3)), d));
        assertEquals("m.yaml: channel_mixer.k = 3 exceeds experts = 2", e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> ChannelMixers.read(
                new ConfigReader("m.yaml", "channel_mixer", Map.of("type", "moe", "jitter", 1.5)), d));
        assertTrue(e.getMessage().startsWith("m.yaml: channel_mixer.jitter"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> ChannelMixers.read(
                new ConfigReader("m.yaml", "channel_mixer", Map.of("type", "moe", "capacity_factor", -1)), d));
        assertTrue(e.getMessage().startsWith("m.yaml: channel_mixer.capacity_factor must be"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> ChannelMixers.read(
                new ConfigReader("m.yaml", "channel_mixer", Map.of("type", "moe", "expert", 4)), d));
        assertTrue(e.getMessage().contains("expert"), e.getMessage());
    }
}
