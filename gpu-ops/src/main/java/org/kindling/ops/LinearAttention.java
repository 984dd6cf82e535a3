package org.kindling.ops;

import java.util.function.IntToDoubleFunction;

/**
 * The layout of a causal linear-attention call (Katharopoulos et al. 2020), checked the same way
 * by every backend. q and k hold feature-mapped queries and keys, [T, NH·F], non-negative (φ =
 * elu + 1, or Performer's FAVOR+ features); v and out are [T, NH·D]; rows are packed by
 * cu_seqlens as in {@link Attention}. Per head and sequence,
 * out[t] = Σ_{j≤t} (q_t·k_j) v_j / (q_t·Σ_{j≤t} k_j + eps).
 *
 * @param cu sequence offsets: sequence b owns rows cu[b] ≤ row &lt; cu[b+1]
 * @param tokens T
 * @param heads NH
 * @param features F, the feature dimension of q and k per head
 * @param headDim D, the value dimension per head
 */
public record LinearAttention(int[] cu, int tokens, int heads, int features, int headDim) {

    /** Sequences in the batch. */
    public int sequences() {
        return cu.length - 1;
    }

    public int length(int b) {
        return cu[b + 1] - cu[b];
    }

    /** Longest sequence. */
    public int maxLength() {
        int m = 0;
        for (int b = 0; b < sequences(); b++) {
            m = Math.max(m, length(b));
        }
        return m;
    }

    /** Checks a forward call (out shaped like v) and reads its layout. */
    public static LinearAttention check(Tensor out, Tensor q, Tensor k, Tensor v, Varlen cuSeqlens, int heads, float eps) {
        checkScalars(heads, eps);
        int[] cu = cuSeqlens.host();
        int[] fd = shapes(out, q, k, v, cu[cu.length - 1], heads);
        return new LinearAttention(cu, cu[cu.length - 1], heads, fd[0], fd[1]);
    }

    /**
     * Checks a decoding step over one sequence: q, k [t, NH·F], v and out [t, NH·D], state
     * [NH, F, D] and norm [NH, F]. Returns the layout of the t new tokens as one sequence.
     */
    public static LinearAttention checkStep(Tensor out, Tensor state, Tensor norm, Tensor q, Tensor k, Tensor v, int heads,
                                            float eps) {
        checkScalars(heads, eps);
        requireF32(state, "state");
        requireF32(norm, "norm");
        if (norm.numel() % heads != 0 || norm.numel() == 0) {
            throw new IllegalArgumentException("linear attention norm " + norm + " must be [" + heads + ", F] with F ≥ 1");
        }
        int f = norm.numel() / heads;
        if (state.numel() % (heads * f) != 0 || state.numel() == 0) {
            throw new IllegalArgumentException("linear attention state " + state + " must be [" + heads + ", " + f
                    + ", D] with D ≥ 1 (F from norm " + norm + ")");
        }
        int d = state.numel() / (heads * f);
        if (q.numel() % (heads * f) != 0) {
            throw new IllegalArgumentException("linear attention q " + q + " is not a whole number of rows of NH·F = "
                    + heads * f + " (F from norm " + norm + ")");
        }
        int t = q.numel() / (heads * f);
        int[] fd = shapes(out, q, k, v, t, heads);
        if (t > 0 && fd[1] != d) {
            throw new IllegalArgumentException("linear attention v " + v + " has D = " + fd[1] + " but state " + state
                    + " has D = " + d);
        }
        return new LinearAttention(new int[] {0, t}, t, heads, f, d);
    }

    /** Gradients must be shaped like their inputs. */
    public void checkGrads(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v) {
        same(dq, "dq", q, "q");
        same(dk, "dk", k, "k");
        same(dv, "dv", v, "v");
        same(dout, "dout", v, "v");
    }

    private static void same(Tensor g, String gn, Tensor x, String xn) {
        requireF32(g, gn);
        if (g.numel() != x.numel()) {
            throw new IllegalArgumentException("linear attention " + gn + " " + g + " must have " + xn + "'s " + x.numel()
                    + " elements");
        }
    }

    private static void checkScalars(int heads, float eps) {
        if (heads < 1) {
            throw new IllegalArgumentException("linear attention heads must be ≥ 1, got " + heads);
        }
        // eps > 0 keeps the denominator positive for non-negative features, even where q·Σk is 0.
        if (!(eps > 0) || !Float.isFinite(eps)) {
            throw new IllegalArgumentException("linear attention eps must be finite and > 0, got " + eps);
        }
    }

    /** {F, D} of T rows of q, k [T, NH·F] and v, out [T, NH·D]. */
    private static int[] shapes(Tensor out, Tensor q, Tensor k, Tensor v, int t, int heads) {
        requireF32(out, "out");
        requireF32(q, "q");
        requireF32(k, "k");
        requireF32(v, "v");
        if (t == 0) {
            if (q.numel() + k.numel() + v.numel() + out.numel() != 0) {
                throw new IllegalArgumentException("linear attention over 0 tokens needs empty q, k, v and out, got q " + q
                        + ", k " + k + ", v " + v + ", out " + out);
            }
            return new int[] {0, 0};
        }
        long row = (long) t * heads;
        if (q.numel() % row != 0 || q.numel() == 0) {
            throw new IllegalArgumentException("linear attention q " + q + " must be [" + t + ", " + heads + "·F] with F ≥ 1");
        }
        if (k.numel() != q.numel()) {
            throw new IllegalArgumentException("linear attention k " + k + " must be shaped like q " + q);
        }
        if (v.numel() % row != 0 || v.numel() == 0) {
            throw new IllegalArgumentException("linear attention v " + v + " must be [" + t + ", " + heads + "·D] with D ≥ 1");
        }
        if (out.numel() != v.numel()) {
            throw new IllegalArgumentException("linear attention out " + out + " must be shaped like v " + v);
        }
        return new int[] {(int) (q.numel() / row), (int) (v.numel() / row)};
    }

    private static void requireF32(Tensor t, String what) {
        if (t.dtype() != DType.F32) {
            throw new IllegalArgumentException("linear attention " + what + " must be F32, got " + t);
        }
    }

    /** Fails naming the first negative (or NaN) feature: the kernels' denominators assume φ ≥ 0. */
    public static void checkFeatures(String what, int n, int rowLength, IntToDoubleFunction x) {
        for (int i = 0; i < n; i++) {
            double e = x.applyAsDouble(i);
            if (!(e >= 0)) {
                throw new IllegalArgumentException("linear attention " + what + "[" + i / rowLength + ", " + i % rowLength
                        + "] = " + e + ": features must be non-negative (φ = elu + 1, FAVOR+)");
            }
        }
    }
}
