package org.kindling.models.mixers.attention;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.kindling.models.DecodeSession;
import org.kindling.models.Gpt;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.mixers.MixerState;
import org.kindling.models.mixers.TokenMixer;
import org.kindling.models.nn.LayerContext;
import org.kindling.models.nn.LinearSpec;
import org.kindling.models.nn.Params;
import org.kindling.models.nn.Seqs;
import org.kindling.models.nn.StepContext;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;
import org.kindling.ops.cpu.CpuDevice;

/**
 * Attention under the flat-butterfly block mask, at lengths spanning several 128-token blocks:
 * the forward against a direct double-precision computation of the masked attention, decoding
 * against the full forward, and the limits of the mask.
 */
class MaskedAttentionTest {
    private static final int C = 16;
    private static final int BLOCK = 128;
    private final Device dev = CpuDevice.open(2);
    private final List<AutoCloseable> open = new ArrayList<>();

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

    private static AttentionSpec butterfly(int heads, int kvHeads, int size) {
        return new AttentionSpec(heads, kvHeads, LinearSpec.DENSE, AttentionSpec.Mask.FLAT_BUTTERFLY, BLOCK, size);
    }

    /** A mixer over sequences up to maxSeq tokens, every parameter (biases too) redrawn from the seed. */
    private record Built(TokenMixer mixer, Params params) {
    }

    private Built build(AttentionSpec spec, int maxSeq, long seed) {
        Params.Builder pb = new Params.Builder();
        TokenMixer mixer = keep(spec.build(new LayerContext(pb, dev, "mixer", C, 0, 2, 0.3, 5, keep(new StepContext()), maxSeq)));
        Params params = keep(pb.build(dev, seed));
        params.values().copyFrom(uniform(seed + 1, params.count(), 0.4));
        return new Built(mixer, params);
    }

    private static double[] uniform(long seed, int n, double scale) {
        SplittableRandom r = new SplittableRandom(seed);
        double[] v = new double[n];
        for (int i = 0; i < n; i++) {
            v[i] = scale * (2 * r.nextDouble() - 1);
        }
        return v;
    }

    private Seqs seqs(int[] cu) {
        TokenBatch b = new TokenBatch(new int[cu[cu.length - 1]], cu);
        return new Seqs(keep(dev.fromInts(cu, cu.length)), keep(dev.fromInts(b.positions(), b.size())), cu);
    }

    private static int[] offsets(int... lengths) {
        int[] cu = new int[lengths.length + 1];
        for (int i = 0; i < lengths.length; i++) {
            cu[i + 1] = cu[i] + lengths[i];
        }
        return cu;
    }

    private double[] forward(TokenMixer mixer, double[] x, int[] cu) {
        int t = cu[cu.length - 1];
        Tensor xt = keep(dev.allocate(DType.F32, t, C)).copyFrom(x);
        Tensor y = keep(dev.allocate(DType.F32, t, C));
        mixer.forward(y, xt, seqs(cu));
        return y.toDoubleArray();
    }

    /** y[T, out] = x[T, in]·Wᵀ + b from the mixer's parameters. */
    private static double[] linear(Params p, String name, double[] x, int rows, int in) {
        double[] w = p.get(name + ".weight").value().toDoubleArray();
        double[] b = p.get(name + ".bias").value().toDoubleArray();
        int out = b.length;
        double[] y = new double[rows * out];
        for (int r = 0; r < rows; r++) {
            for (int o = 0; o < out; o++) {
                double s = b[o];
                for (int i = 0; i < in; i++) {
                    s += x[r * in + i] * w[o * in + i];
                }
                y[r * out + o] = s;
            }
        }
        return y;
    }

    /**
     * The masked attention written out in double: query i of a sequence attends key j when j ≤ i
     * and (i/block) XOR (j/block) is 0 or a power of two below the butterfly size.
     */
    private static double[] reference(Params p, double[] x, int[] cu, int heads, int kvHeads, int butterflySize) {
        int t = cu[cu.length - 1];
        int hs = C / heads;
        double[] q = linear(p, "mixer.q", x, t, C);
        double[] k = linear(p, "mixer.k", x, t, C);
        double[] v = linear(p, "mixer.v", x, t, C);
        int kw = kvHeads * hs;
        double[] a = new double[t * C];
        for (int s = 0; s + 1 < cu.length; s++) {
            for (int i = 0; i < cu[s + 1] - cu[s]; i++) {
                for (int h = 0; h < heads; h++) {
                    int g = h / (heads / kvHeads);
                    double[] w = new double[i + 1];
                    double max = Double.NEGATIVE_INFINITY;
                    for (int j = 0; j <= i; j++) {
                        int xor = (i / BLOCK) ^ (j / BLOCK);
                        if (xor != 0 && (Integer.bitCount(xor) != 1 || xor >= butterflySize)) {
                            w[j] = Double.NEGATIVE_INFINITY;
                            continue;
                        }
                        double dot = 0;
                        for (int d = 0; d < hs; d++) {
                            dot += q[(cu[s] + i) * C + h * hs + d] * k[(cu[s] + j) * kw + g * hs + d];
                        }
                        w[j] = dot / Math.sqrt(hs);
                        max = Math.max(max, w[j]);
                    }
                    double sum = 0;
                    for (int j = 0; j <= i; j++) {
                        w[j] = Math.exp(w[j] - max);
                        sum += w[j];
                    }
                    for (int j = 0; j <= i; j++) {
                        for (int d = 0; d < hs; d++) {
                            a[(cu[s] + i) * C + h * hs + d] += w[j] / sum * v[(cu[s] + j) * kw + g * hs + d];
                        }
                    }
                }
            }
        }
        return linear(p, "mixer.proj", a, t, C);
    }

    private static void assertClose(double[] want, double[] got, double tol, String what) {
        assertEquals(want.length, got.length, what);
        for (int i = 0; i < want.length; i++) {
            assertEquals(want[i], got[i], tol * (1 + Math.abs(want[i])), what + " entry " + i);
        }
    }

    @Test
    void forwardEqualsTheMaskedAttentionComputedInDouble() {
        // 300 tokens: blocks 0, 1 and a partial 2; butterfly size 2 keeps (1, 0) but drops (2, 0) and (2, 1).
        int[] cu = offsets(300, 137);
        double[] x = uniform(3, cu[2] * C, 1.0);
        Built masked = build(butterfly(4, 2, 2), 300, 7);
        double[] got = forward(masked.mixer(), x, cu);
        assertClose(reference(masked.params(), x, cu, 4, 2, 2), got, 1e-4, "flat butterfly 2");
        // The mask matters: the same weights attending densely give other outputs in block 2.
        Built dense = build(new AttentionSpec(4, 2), 300, 7);
        double[] all = forward(dense.mixer(), x, cu);
        double diff = 0;
        for (int i = 2 * BLOCK * C; i < 300 * C; i++) {
            diff = Math.max(diff, Math.abs(all[i] - got[i]));
        }
        assertTrue(diff > 1e-3, "masked and dense outputs of block 2 differ by only " + diff);
        assertArrayEquals(java.util.Arrays.copyOf(all, 2 * BLOCK * C), java.util.Arrays.copyOf(got, 2 * BLOCK * C), 1e-6,
                "blocks 0 and 1 keep every causal block");
    }

    @Test
    void aButterflyKeepingEveryCausalBlockIsDenseAttention() {
        // Two blocks: XOR is 0 or 1, both kept from butterfly size 2 on. (From three blocks on blocks 1 and 2,
        // XOR 3, are never both kept: the flat butterfly is a sum of factors, not their product.)
        int[] cu = offsets(256, 77, 200);
        double[] x = uniform(4, cu[3] * C, 1.0);
        double[] dense = forward(build(new AttentionSpec(2, 2), 256, 9).mixer(), x, cu);
        for (int size : new int[] {2, 4}) {
            assertArrayEquals(dense, forward(build(butterfly(2, 2, size), 256, 9).mixer(), x, cu), 0.0, "butterfly size " + size);
        }
        Built three = build(butterfly(2, 2, 4), 300, 9);
        int[] cu3 = offsets(300);
        double[] x3 = uniform(5, 300 * C, 1.0);
        assertClose(reference(three.params(), x3, cu3, 2, 2, 4), forward(three.mixer(), x3, cu3), 1e-4, "three blocks, size 4");
    }

    /**
     * Two sequences decoded in batched chunks that cross block boundaries, single tokens among them.
     * Butterfly size 2 keeps contiguous key blocks (block 2 attends only itself); size 4 keeps
     * blocks 0 and 2 for block 2 but not 1 (XOR 3), so decoding gathers them.
     */
    @ParameterizedTest
    @ValueSource(ints = {2, 4})
    void decodingEqualsTheFullForwardUnderTheMask(int size) {
        int[] lengths = {300, 270};
        int[] cu = offsets(lengths);
        double[] x = uniform(6, cu[2] * C, 1.0);
        Built built = build(butterfly(4, 1, size), 300, 11);
        TokenMixer mixer = built.mixer();
        double[] full = forward(mixer, x, cu);
        assertClose(reference(built.params(), x, cu, 4, 1, size), full, 1e-4, "forward");
        int[][] chunks = {{100, 0}, {40, 130}, {1, 1}, {0, 1}, {120, 2}, {1, 6}, {38, 130}};
        int[] done = new int[2];
        MixerState state = keep(mixer.newState(2));
        for (int[] chunk : chunks) {
            int[] stepCu = offsets(chunk);
            double[] stepX = new double[stepCu[2] * C];
            for (int b = 0; b < 2; b++) {
                System.arraycopy(x, (cu[b] + done[b]) * C, stepX, stepCu[b] * C, chunk[b] * C);
            }
            try (Tensor sx = dev.allocate(DType.F32, stepCu[2], C).copyFrom(stepX);
                 Tensor sy = dev.allocate(DType.F32, stepCu[2], C)) {
                mixer.forwardStep(sy, sx, stepCu, state);
                double[] got = sy.toDoubleArray();
                for (int b = 0; b < 2; b++) {
                    for (int i = 0; i < chunk[b] * C; i++) {
                        double want = full[(cu[b] + done[b]) * C + i];
                        assertEquals(want, got[stepCu[b] * C + i], 1e-5 * (1 + Math.abs(want)),
                                "size " + size + ": sequence " + b + " token " + (done[b] + i / C) + " channel " + i % C);
                    }
                    done[b] += chunk[b];
                }
            }
        }
        assertArrayEquals(lengths, done);
    }

    @Test
    void sequencesBeyondTheMaskAreRefused() {
        // max_seq 200 covers two whole blocks, 256 tokens.
        TokenMixer mixer = build(butterfly(2, 2, 2), 200, 13).mixer();
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> forward(mixer, uniform(7, 257 * C, 1.0), offsets(257)));
        assertTrue(e.getMessage().contains("covers 256 tokens but a sequence has 257"), e.getMessage());
        MixerState state = keep(mixer.newState(1));
        try (Tensor sx = dev.allocate(DType.F32, 256, C).copyFrom(uniform(8, 256 * C, 1.0));
             Tensor sy = dev.allocate(DType.F32, 256, C);
             Tensor one = dev.allocate(DType.F32, 1, C).copyFrom(uniform(9, C, 1.0));
             Tensor y1 = dev.allocate(DType.F32, 1, C)) {
            mixer.forwardStep(sy, sx, new int[] {0, 256}, state);
            e = assertThrows(IllegalArgumentException.class, () -> mixer.forwardStep(y1, one, new int[] {0, 1}, state));
            assertTrue(e.getMessage().contains("sequence 0 would reach 257 tokens") && e.getMessage().contains("covers 256"),
                    e.getMessage());
        }
        assertThrows(IllegalArgumentException.class, () -> butterfly(2, 2, 2).blockMask(0), "a mask needs max_seq");
    }

    /** Inside a model: a masked two-layer GPT decodes like its full forward, past two block boundaries. */
    @Test
    void maskedModelDecodesLikeItsFullForward() {
        int vocab = 29;
        ModelConfig cfg = ModelConfig.gpt(vocab, C, 2, 2, 2, 300, 4, 0, 0.2, 1e-5)
                .withMixers(Collections.nCopies(2, butterfly(2, 2, 2)));
        SplittableRandom r = new SplittableRandom(12);
        int[] seq = new int[300];
        for (int i = 0; i < seq.length; i++) {
            seq[i] = r.nextInt(vocab);
        }
        try (Gpt model = new Gpt(cfg, dev, 3)) {
            float[] full = model.logits(TokenBatch.single(seq)).toFloatArray();
            try (DecodeSession s = model.newSession(1)) {
                float[] pre = s.stepAll(java.util.Arrays.copyOf(seq, 150));
                for (int i = 0; i < 150 * vocab; i++) {
                    assertEquals(full[i], pre[i], 2e-4f * (1 + Math.abs(full[i])), "prefill logit " + i);
                }
                for (int t = 150; t < seq.length; t++) {
                    float[] got = s.stepAll(new int[] {seq[t]});
                    for (int i = 0; i < vocab; i++) {
                        assertEquals(full[t * vocab + i], got[i], 2e-4f * (1 + Math.abs(full[t * vocab + i])), "token " + t);
                    }
                }
            }
        }
    }
}
