package org.kindling.ops;

/**
 * The layout of {@link Backend#topK}, checked the same way by every backend: x [T, E] F32 router
 * scores, values [T, k] F32 and indices [T, k] I32 with 1 ≤ k ≤ E. Per row the k largest scores in
 * descending order, equal scores by lower expert first, so the choice is a function of the scores
 * alone (no dependence on thread count or backend).
 *
 * @param tokens T
 * @param experts E
 * @param k entries kept per row
 */
public record TopK(int tokens, int experts, int k) {

    /** Checks the operands of {@link Backend#topK}. */
    public static TopK check(Tensor values, Tensor indices, Tensor x, int k) {
        if (x.dtype() != DType.F32 || x.rank() < 1) {
            throw new IllegalArgumentException("topK x must be F32 [T, E], got " + x);
        }
        int t = x.rows();
        int e = x.cols();
        if (k < 1 || k > e) {
            throw new IllegalArgumentException("topK k must be in [1, E = " + e + "] for x " + x + ", got " + k);
        }
        if (values.dtype() != DType.F32 || values.rows() != t || values.cols() != k) {
            throw new IllegalArgumentException("topK values " + values + " must be F32 [" + t + ", " + k + "]");
        }
        if (indices.dtype() != DType.I32 || indices.rows() != t || indices.cols() != k) {
            throw new IllegalArgumentException("topK indices " + indices + " must be I32 [" + t + ", " + k + "]");
        }
        // Values are written while later rows of x are still read.
        if (values.storage() == x.storage() && values.offset() < x.offset() + x.numel()
                && x.offset() < values.offset() + values.numel()) {
            throw new IllegalArgumentException("topK values " + values + " must not overlap x " + x);
        }
        return new TopK(t, e, k);
    }

    /**
     * Checks the operands of {@link Backend#topKBackward}: dx [T, E] F32, dvalues [T, k] F32 and
     * indices [T, k] I32 (the ids themselves are checked by {@link #checkIds}).
     */
    public static TopK checkBackward(Tensor dx, Tensor dvalues, Tensor indices) {
        if (dx.dtype() != DType.F32 || dx.rank() < 1 || dx.cols() < 1) {
            throw new IllegalArgumentException("topKBackward dx must be F32 [T, E] with E ≥ 1, got " + dx);
        }
        int t = dx.rows();
        if (indices.dtype() != DType.I32 || indices.rank() < 1 || indices.rows() != t || indices.cols() < 1) {
            throw new IllegalArgumentException("topKBackward indices " + indices + " must be I32 [" + t + ", k]");
        }
        int k = indices.cols();
        if (dvalues.dtype() != DType.F32 || dvalues.rows() != t || dvalues.cols() != k) {
            throw new IllegalArgumentException("topKBackward dvalues " + dvalues + " must be F32 [" + t + ", " + k + "]");
        }
        // dx rows are added to while later rows of dvalues are still read.
        if (KernelChecks.overlap(dx, dvalues)) {
            throw new IllegalArgumentException("topKBackward dx " + dx + " must not overlap dvalues " + dvalues);
        }
        return new TopK(t, dx.cols(), k);
    }

    /** The T·k ids from {@code off} must name experts in [0, E). */
    public void checkIds(int[] ids, int off, String what) {
        KernelChecks.checkIds(ids, off, tokens * k, experts, what);
    }

    /** A NaN score has no place in the order: it names the row and column of the bad router output. */
    public static void checkScore(double v, int row, int col) {
        if (Double.isNaN(v)) {
            throw new NonFiniteInputException("topK x[" + row + ", " + col + "] is NaN");
        }
    }
}
