package org.kindling.ops;

/**
 * The layout of a causal long convolution (S4D, H3): u and y are [T, C] packed by cu_seqlens like
 * attention (sequence s owns rows cu[s] ≤ row &lt; cu[s+1]), k is [L, C] with L ≥ 1, and per
 * sequence and channel y[t, c] = Σ_{j ≤ min(t, L − 1)} k[j, c]·u[t − j, c] over that sequence's
 * tokens only: taps beyond L are zero, so L may be shorter than a sequence (H3's shift SSM, L =
 * d_state) or longer (S4D, a kernel for the longest sequence; its tail is not read).
 *
 * @param cu validated sequence offsets (B + 1 of them)
 * @param tokens T
 * @param channels C
 * @param kernelLength L, the rows of k
 * @param maxLength the longest sequence
 */
public record CausalConv(int[] cu, int tokens, int channels, int kernelLength, int maxLength) {

    public int sequences() {
        return cu.length - 1;
    }

    public int length(int s) {
        return cu[s + 1] - cu[s];
    }

    /** Taps of k that reach inside sequence s: min(L, its length). */
    public int taps(int s) {
        return Math.min(kernelLength, length(s));
    }

    /** Checks the operands of {@link Backend#causalConvForward} and reads the sequence offsets. */
    public static CausalConv check(Tensor y, Tensor u, Tensor k, Varlen cuSeqlens) {
        CausalConv c = inputs(u, k, cuSeqlens);
        like(y, "y", u);
        // The direct sum reads u[t − j] after writing y[t − j]; overlapping them would corrupt u.
        if (y.storage() == u.storage() && y.offset() < u.offset() + u.numel() && u.offset() < y.offset() + y.numel()) {
            throw new IllegalArgumentException("causal conv y " + y + " must not overlap u " + u);
        }
        return c;
    }

    /** Checks the operands of {@link Backend#causalConvBackward} and reads the sequence offsets. */
    public static CausalConv checkBackward(Tensor du, Tensor dk, Tensor dy, Tensor u, Tensor k, Varlen cuSeqlens) {
        CausalConv c = inputs(u, k, cuSeqlens);
        like(du, "du", u);
        like(dy, "dy", u);
        like(dk, "dk", k);
        return c;
    }

    private static CausalConv inputs(Tensor u, Tensor k, Varlen cuSeqlens) {
        f32(u, "u");
        f32(k, "k");
        if (u.rank() < 2 || k.rank() != 2) {
            throw new IllegalArgumentException("causal conv needs u [T, C] and k [L, C], got u " + u + " and k " + k);
        }
        if (k.cols() != u.cols()) {
            throw new IllegalArgumentException("causal conv k " + k + " must have u's " + u.cols() + " channels");
        }
        int[] cu = cuSeqlens.over(u.rows(), "cu_seqlens", "u");
        int max = cuSeqlens.maxSeqlen();
        if (k.rows() < 1) {
            throw new IllegalArgumentException("causal conv k " + k + " must have at least 1 row (tap)");
        }
        return new CausalConv(cu, u.rows(), u.cols(), k.rows(), max);
    }

    private static void f32(Tensor t, String what) {
        if (t.dtype() != DType.F32) {
            throw new IllegalArgumentException("causal conv " + what + " must be F32, got " + t);
        }
    }

    private static void like(Tensor t, String what, Tensor ref) {
        f32(t, what);
        KernelChecks.sameRows(t, "causal conv " + what, ref);
    }
}
