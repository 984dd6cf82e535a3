package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;
import static org.kindling.ops.Reference.widen;

import java.util.function.Function;
import org.junit.jupiter.api.Test;

/**
 * Central finite differences of each reference forward against its reference backward, all in
 * double precision: the references the kernels are tested against are themselves right. The
 * probe is the loss L = Σ dy·f(x); its gradient in x must equal the backward twin's dx. With
 * h = 1e-5 the difference quotient errs by about h²·f''' + ε·|L|/h ≈ 1e-10, so the cap
 * |fd − analytic| ≤ 1e-8 + 1e-7·|fd| is far below the O(1)·dy error of a wrong or missing term.
 */
class ReferenceGradientTest {
    private static final double H = 1e-5;

    /** Finite-difference gradient of Σ dy·f(x) with respect to every element of x. */
    static double[] numeric(Function<double[], double[]> f, double[] x, double[] dy) {
        double[] g = new double[x.length];
        for (int i = 0; i < x.length; i++) {
            double keep = x[i];
            x[i] = keep + H;
            double plus = dot(f.apply(x), dy);
            x[i] = keep - H;
            double minus = dot(f.apply(x), dy);
            x[i] = keep;
            g[i] = (plus - minus) / (2 * H);
        }
        return g;
    }

    private static double dot(double[] a, double[] b) {
        double s = 0;
        for (int i = 0; i < a.length; i++) {
            s += a[i] * b[i];
        }
        return s;
    }

    static void assertGradient(String what, double[] numeric, double[] analytic) {
        assertEquals(numeric.length, analytic.length, what + " length");
        for (int i = 0; i < numeric.length; i++) {
            double err = Math.abs(numeric[i] - analytic[i]);
            if (!(err <= 1e-8 + 1e-7 * Math.abs(numeric[i]))) {
                fail(what + " element " + i + ": analytic " + analytic[i] + " vs finite difference " + numeric[i]);
            }
        }
    }

    static double[] data(long seed, int n, double lo, double hi) {
        return widen(Check.uniform(seed, n, lo, hi));
    }

    static double[] data(long seed, int n) {
        return data(seed, n, -1, 1);
    }

    @Test
    void softmax() {
        int n = 3;
        int c = 7;
        double[] x = data(1, n * c, -2, 2);
        double[] dy = data(2, n * c);
        double[] analytic = Reference.softmaxBackward(dy, x, n, c);
        assertGradient("softmax", numeric(v -> Reference.softmax(v, n, c), x, dy), analytic);
        assertGradient("softmax from its output", analytic,
                Reference.softmaxBackwardFromOutput(dy, Reference.softmax(x, n, c), n, c));
    }

    @Test
    void layerNorm() {
        int n = 3;
        int c = 7;
        double[] x = data(3, n * c, -2, 2);
        double[] w = data(4, c, 0.5, 1.5);
        double[] b = data(5, c);
        double[] dy = data(6, n * c);
        double[][] g = Reference.layerNormBackward(dy, x, w, n, c, 1e-5);
        assertGradient("layerNorm dx", numeric(v -> Reference.layerNorm(v, w, b, n, c, 1e-5)[0], x, dy), g[0]);
        assertGradient("layerNorm dweight", numeric(v -> Reference.layerNorm(x, v, b, n, c, 1e-5)[0], w, dy), g[1]);
        assertGradient("layerNorm dbias", numeric(v -> Reference.layerNorm(x, w, v, n, c, 1e-5)[0], b, dy), g[2]);
    }

    @Test
    void rmsNorm() {
        int n = 3;
        int c = 7;
        double[] x = data(7, n * c, -2, 2);
        double[] w = data(8, c, 0.5, 1.5);
        double[] dy = data(9, n * c);
        double[][] g = Reference.rmsNormBackward(dy, x, w, n, c, 1e-6);
        assertGradient("rmsNorm dx", numeric(v -> Reference.rmsNorm(v, w, n, c, 1e-6)[0], x, dy), g[0]);
        assertGradient("rmsNorm dweight", numeric(v -> Reference.rmsNorm(x, v, n, c, 1e-6)[0], w, dy), g[1]);
    }

    @Test
    void gelu() {
        double[] x = data(10, 21, -4, 4);
        double[] dy = data(11, 21);
        assertGradient("gelu", numeric(Reference::gelu, x, dy), Reference.geluBackward(dy, x));
    }

    @Test
    void crossEntropy() {
        int n = 4;
        int v = 9;
        double[] logits = data(12, n * v, -3, 3);
        int[] targets = {3, -100, 0, 8};
        double[] ones = {1, 1, 1, 1};
        assertGradient("crossEntropy", numeric(x -> Reference.crossEntropy(x, targets, n, v, -100), logits, ones),
                Reference.crossEntropyBackward(logits, targets, n, v, -100, 1.0));
    }

    @Test
    void embedding() {
        int vocab = 5;
        int c = 3;
        double[] table = data(13, vocab * c);
        int[] ids = {4, 1, 4, 0};
        double[] dy = data(14, ids.length * c);
        assertGradient("embedding", numeric(t -> Reference.embedding(ids, t, c), table, dy),
                Reference.embeddingBackward(dy, ids, vocab, c));
    }

    // ---- attention ----

    /** dq, dk, dv of the reference backward against finite differences of the reference forward's out. */
    private static void attentionGradient(String what, Attention a, int[] cuQ, int[] cuK, long seed) {
        int tq = cuQ[cuQ.length - 1];
        int tk = cuK[cuK.length - 1];
        double[] q = data(seed, tq * a.heads() * a.headDim(), -2, 2);
        double[] k = data(seed + 1, tk * a.kvHeads() * a.headDim(), -2, 2);
        double[] v = data(seed + 2, tk * a.kvHeads() * a.headDim());
        double[] dout = data(seed + 3, q.length);
        double[][] g = Reference.attentionBackward(a, dout, q, k, v, cuQ, cuK);
        assertGradient(what + " dq", numeric(x -> Reference.attention(a, x, k, v, cuQ, cuK)[0], q, dout), g[0]);
        assertGradient(what + " dk", numeric(x -> Reference.attention(a, q, x, v, cuQ, cuK)[0], k, dout), g[1]);
        assertGradient(what + " dv", numeric(x -> Reference.attention(a, q, k, x, cuQ, cuK)[0], v, dout), g[2]);
    }

    @Test
    void attentionWithGroupedQueriesAndAScale() {
        attentionGradient("GQA 4/2, scale 0.7", new Attention(4, 2, 3, 0.7f, false, null), new int[] {0, 3, 8},
                new int[] {0, 3, 8}, 20);
    }

    @Test
    void causalAttentionWithShorterAndLongerQueryChunks() {
        // Sequence 0: 2 queries against 5 keys (decoding against a cache); sequence 1: 4 queries
        // against 2 keys, whose first 2 queries attend nothing.
        attentionGradient("causal MQA Lq<Lk and Lq>Lk", new Attention(2, 1, 3, 0.9f, true, null), new int[] {0, 2, 6},
                new int[] {0, 5, 7}, 30);
    }

    @Test
    void blockSparseCausalAttention() {
        // 130 tokens: block 0 is tokens 0..127, block 1 is 128..129; a window of 0 keeps only the diagonal blocks.
        Attention a = new Attention(2, 1, 2, 0.8f, true, BlockMask.localWindow(130, 128, 0));
        attentionGradient("block-sparse causal", a, new int[] {0, 130}, new int[] {0, 130}, 40);
    }

    /**
     * An independent, deliberately plain attention for fixed cases: each query's keys, the scale
     * and the key/value head are spelled out by the caller instead of derived from {@link Attention}.
     */
    private interface Rule {
        boolean attends(int sequence, int query, int key);
    }

    /** out[Tq·NH·HS] and lse[NH·Tq] computed straight from the definition softmax(scale·q·kᵀ)·v. */
    private static double[][] direct(int nh, int nkv, int hs, double scale, int[] kvHeadOf, Rule rule, double[] q,
                                     double[] k, double[] v, int[] cuQ, int[] cuK) {
        int tq = cuQ[cuQ.length - 1];
        double[] out = new double[tq * nh * hs];
        double[] lse = new double[nh * tq];
        for (int b = 0; b + 1 < cuQ.length; b++) {
            for (int h = 0; h < nh; h++) {
                int g = kvHeadOf[h];
                for (int i = 0; i < cuQ[b + 1] - cuQ[b]; i++) {
                    int row = cuQ[b] + i;
                    double sumExp = 0;
                    double[] weightedV = new double[hs];
                    for (int j = 0; j < cuK[b + 1] - cuK[b]; j++) {
                        if (!rule.attends(b, i, j)) {
                            continue;
                        }
                        int key = cuK[b] + j;
                        double s = 0;
                        for (int d = 0; d < hs; d++) {
                            s += q[(row * nh + h) * hs + d] * k[(key * nkv + g) * hs + d];
                        }
                        double e = Math.exp(scale * s);
                        sumExp += e;
                        for (int d = 0; d < hs; d++) {
                            weightedV[d] += e * v[(key * nkv + g) * hs + d];
                        }
                    }
                    lse[h * tq + row] = Math.log(sumExp);
                    for (int d = 0; d < hs; d++) {
                        out[(row * nh + h) * hs + d] = sumExp == 0 ? 0 : weightedV[d] / sumExp;
                    }
                }
            }
        }
        return new double[][] {out, lse};
    }

    private static void assertForward(String what, Attention a, int[] kvHeadOf, Rule rule, int[] cuQ, int[] cuK, long seed) {
        int tq = cuQ[cuQ.length - 1];
        int tk = cuK[cuK.length - 1];
        double[] q = data(seed, tq * a.heads() * a.headDim(), -1.5, 1.5);
        double[] k = data(seed + 1, tk * a.kvHeads() * a.headDim(), -1.5, 1.5);
        double[] v = data(seed + 2, tk * a.kvHeads() * a.headDim());
        double[][] want = direct(a.heads(), a.kvHeads(), a.headDim(), a.softmaxScale(), kvHeadOf, rule, q, k, v, cuQ, cuK);
        double[][] got = Reference.attention(a, q, k, v, cuQ, cuK);
        int attendsNothing = 0;
        for (int i = 0; i < want[1].length; i++) {
            if (want[1][i] == Double.NEGATIVE_INFINITY) {
                assertEquals(Double.NEGATIVE_INFINITY, got[1][i], what + " lse " + i + " of a query that attends nothing");
                attendsNothing++;
            } else {
                assertEquals(want[1][i], got[1][i], 1e-12, what + " lse " + i);
            }
        }
        for (int i = 0; i < want[0].length; i++) {
            assertEquals(want[0][i], got[0][i], 1e-12, what + " out " + i);
        }
        assertTrue(attendsNothing < want[1].length, what + ": every query is masked, the case checks nothing");
    }

    @Test
    void referenceAttentionMatchesTheDefinitionForScaleAndGroupedHeads() {
        // 4 query heads share 2 key/value heads: 0, 1 → 0 and 2, 3 → 1. Dense, scale 0.37.
        assertForward("GQA", new Attention(4, 2, 5, 0.37f, false, null), new int[] {0, 0, 1, 1}, (b, i, j) -> true,
                new int[] {0, 4, 11}, new int[] {0, 6, 9}, 50);
        // Multi-query: every head reads the single key/value head.
        assertForward("MQA", new Attention(3, 1, 4, 1.3f, false, null), new int[] {0, 0, 0}, (b, i, j) -> true,
                new int[] {0, 5}, new int[] {0, 5}, 51);
    }

    @Test
    void referenceCausalAttentionAlignsTheLastQueryWithTheLastKey() {
        int[] lq = {2, 5, 1};
        int[] lk = {6, 3, 1};
        // Query i of a chunk of lq queries is token lk − lq + i of its sequence; it sees keys up to and including itself.
        Rule bottomRight = (b, i, j) -> j <= lk[b] - lq[b] + i;
        assertForward("causal", new Attention(2, 2, 3, 0.5f, true, null), new int[] {0, 1}, bottomRight,
                new int[] {0, 2, 7, 8}, new int[] {0, 6, 9, 10}, 52);
    }

    @Test
    void referenceBlockSparseAttentionKeepsExactlyTheAllowedBlocks() {
        // 300 tokens in blocks of 128 (0..127, 128..255, 256..299); a local window of 1 block drops (0, 2) and (2, 0).
        BlockMask mask = BlockMask.localWindow(300, 128, 1);
        Rule window = (b, i, j) -> !(i < 128 && j >= 256) && !(i >= 256 && j < 128);
        assertForward("local window", new Attention(2, 1, 3, 0.6f, false, mask), new int[] {0, 0}, window,
                new int[] {0, 300}, new int[] {0, 300}, 53);
        Rule causalWindow = (b, i, j) -> window.attends(b, i, j) && j <= i;
        assertForward("causal local window", new Attention(2, 1, 3, 0.6f, true, mask), new int[] {0, 0}, causalWindow,
                new int[] {0, 300}, new int[] {0, 300}, 54);
    }
}
