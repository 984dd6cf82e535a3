package org.kindling.ops;

/**
 * The layout of a FAVOR+ feature map call (Performer, Choromanski et al. 2021), checked the same
 * way by every backend: x [T, NH·D] (queries or keys, already scaled by D^(−1/4)), w [M, D] random
 * features shared by the heads, out [T, NH·M].
 *
 * @param tokens T
 * @param heads NH
 * @param headDim D
 * @param features M
 */
public record FavorFeatures(int tokens, int heads, int headDim, int features) {

    /** Checks the operands of {@link Backend#favorFeatures}. */
    public static FavorFeatures check(Tensor out, Tensor x, Tensor w, int heads) {
        f32(out, "out");
        f32(x, "x");
        f32(w, "w");
        if (heads < 1) {
            throw new IllegalArgumentException("favor features heads must be ≥ 1, got " + heads);
        }
        if (w.rank() != 2 || w.numel() == 0) {
            throw new IllegalArgumentException("favor features w " + w + " must be [M, D] with M, D ≥ 1");
        }
        int m = w.rows();
        int d = w.cols();
        long row = (long) heads * d;
        if (x.numel() % row != 0) {
            throw new IllegalArgumentException("favor features x " + x + " must be [T, " + heads + "·" + d
                    + "] (NH·D, D from w " + w + ")");
        }
        int t = (int) (x.numel() / row);
        if (out.numel() != (long) t * heads * m) {
            throw new IllegalArgumentException("favor features out " + out + " must be [" + t + ", " + heads + "·" + m
                    + "] (T from x " + x + ", M from w " + w + ")");
        }
        // A row's features are written while its x is still read.
        if (out.storage() == x.storage() && out.offset() < x.offset() + x.numel()
                && x.offset() < out.offset() + out.numel()) {
            throw new IllegalArgumentException("favor features out " + out + " must not overlap x " + x);
        }
        return new FavorFeatures(t, heads, d, m);
    }

    /** Checks the operands of {@link Backend#favorFeaturesBackward}: dx like x, dout like out. */
    public static FavorFeatures checkBackward(Tensor dx, Tensor dout, Tensor out, Tensor x, Tensor w, int heads) {
        FavorFeatures f = check(out, x, w, heads);
        f32(dx, "dx");
        f32(dout, "dout");
        KernelChecks.sameNumel(dx, "favor features dx", x, "x");
        KernelChecks.sameNumel(dout, "favor features dout", out, "out");
        return f;
    }

    private static void f32(Tensor t, String what) {
        if (t.dtype() != DType.F32) {
            throw new IllegalArgumentException("favor features " + what + " must be F32, got " + t);
        }
    }
}
