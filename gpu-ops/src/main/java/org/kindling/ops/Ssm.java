package org.kindling.ops;

import java.util.Arrays;

/**
 * The layout of the diagonal state-space convolution (S4D, H3's diagonal SSM): u and y are [T, C]
 * packed by cu_seqlens like {@link CausalConv}; per channel the parameters are logDt [C],
 * aRe, aIm [C, N] and c [C, N, 2] (complex C̃ as interleaved re, im), with dt = exp(logDt),
 * A = −exp(aRe) + i·aIm and B = 1. Zero-order hold gives Ā = exp(dt·A) and w = C̃·(Ā − 1)/A, and
 * the kernel is K[j, c] = 2·Re(Σ_n w_n·Ā_n^j) (the 2 counts the conjugate pair).
 *
 * @param cu validated sequence offsets (B + 1 of them; {0, t} for a step)
 * @param tokens T
 * @param channels C
 * @param modes N
 * @param block tokens per FFT block of the fused kernel (1 for a step)
 * @param maxLength the longest sequence
 */
public record Ssm(int[] cu, int tokens, int channels, int modes, int block, int maxLength) {

    public int sequences() {
        return cu.length - 1;
    }

    public int length(int s) {
        return cu[s + 1] - cu[s];
    }

    /** Checks the operands of {@link Backend#ssmConvForward} and reads the sequence offsets. */
    public static Ssm check(Tensor y, Tensor u, Tensor logDt, Tensor aRe, Tensor aIm, Tensor c, Varlen cuSeqlens,
                            int block) {
        Ssm s = inputs(u, logDt, aRe, aIm, c, cuSeqlens, block);
        like(y, "y", u);
        // The blocks read u after earlier blocks wrote y; overlapping them would corrupt u.
        disjoint(y, "y", u, "u");
        return s;
    }

    /** Checks the operands of {@link Backend#ssmConvBackward} and reads the sequence offsets. */
    public static Ssm checkBackward(Tensor du, Tensor dlogDt, Tensor daRe, Tensor daIm, Tensor dc, Tensor dy,
                                    Tensor u, Tensor logDt, Tensor aRe, Tensor aIm, Tensor c, Varlen cuSeqlens,
                                    int block) {
        Ssm s = inputs(u, logDt, aRe, aIm, c, cuSeqlens, block);
        like(du, "du", u);
        like(dy, "dy", u);
        like(dlogDt, "dlogDt", logDt);
        like(daRe, "daRe", aRe);
        like(daIm, "daIm", aIm);
        like(dc, "dc", c);
        return s;
    }

    /** Checks the operands of {@link Backend#ssmStep}: u, y [t, C] of one sequence and state [C, N, 2]. */
    public static Ssm checkStep(Tensor y, Tensor state, Tensor u, Tensor logDt, Tensor aRe, Tensor aIm, Tensor c) {
        f32(u, "u");
        if (u.rank() != 2) {
            throw new IllegalArgumentException("ssm u must be [t, C], got " + u);
        }
        int[] cu = {0, u.rows()};
        int n = params(u.cols(), logDt, aRe, aIm, c);
        like(y, "y", u);
        like(state, "state", c);
        disjoint(y, "y", u, "u");
        disjoint(y, "y", state, "state");
        disjoint(state, "state", u, "u");
        return new Ssm(cu, u.rows(), u.cols(), n, 1, u.rows());
    }

    /**
     * {Re Ā, Im Ā, Re q, Im q, Re w, Im w} for one mode, in double: Ā = exp(dt·A), q = (Ā − 1)/A and
     * w = C̃·q, with A = −exp(aRe) + i·aIm.
     */
    public static double[] zoh(double dt, double aRe, double aIm, double cRe, double cIm) {
        double ar = -Math.exp(aRe);
        double mag = Math.exp(dt * ar);
        double br = mag * Math.cos(dt * aIm);
        double bi = mag * Math.sin(dt * aIm);
        // Re A < 0, so |A| > 0 and the division is safe.
        double nr = br - 1;
        double den = ar * ar + aIm * aIm;
        double qr = (nr * ar + bi * aIm) / den;
        double qi = (bi * ar - nr * aIm) / den;
        return new double[] {br, bi, qr, qi, cRe * qr - cIm * qi, cRe * qi + cIm * qr};
    }

    private static Ssm inputs(Tensor u, Tensor logDt, Tensor aRe, Tensor aIm, Tensor c, Varlen cuSeqlens, int block) {
        if (block < 1) {
            throw new IllegalArgumentException("ssm block must be at least 1, got " + block);
        }
        f32(u, "u");
        if (u.rank() != 2) {
            throw new IllegalArgumentException("ssm u must be [T, C], got " + u);
        }
        int n = params(u.cols(), logDt, aRe, aIm, c);
        int[] cu = cuSeqlens.over(u.rows(), "cu_seqlens", "u");
        int max = cuSeqlens.maxSeqlen();
        return new Ssm(cu, u.rows(), u.cols(), n, block, max);
    }

    /** Checks logDt [C], aRe, aIm [C, N], c [C, N, 2] and returns N. */
    private static int params(int channels, Tensor logDt, Tensor aRe, Tensor aIm, Tensor c) {
        f32(logDt, "logDt");
        f32(aRe, "aRe");
        f32(aIm, "aIm");
        f32(c, "c");
        shape(logDt, "logDt", channels);
        if (aRe.rank() != 2 || aRe.dim(0) != channels || aRe.dim(1) < 1) {
            throw new IllegalArgumentException("ssm aRe must be [" + channels + ", N] with N ≥ 1 (C from u), got " + aRe);
        }
        int n = aRe.dim(1);
        shape(aIm, "aIm", channels, n);
        shape(c, "c", channels, n, 2);
        return n;
    }

    private static void shape(Tensor t, String what, int... want) {
        if (!Arrays.equals(t.shape(), want)) {
            throw new IllegalArgumentException("ssm " + what + " must be " + Arrays.toString(want) + ", got " + t);
        }
    }

    private static void f32(Tensor t, String what) {
        if (t.dtype() != DType.F32) {
            throw new IllegalArgumentException("ssm " + what + " must be F32, got " + t);
        }
    }

    private static void like(Tensor t, String what, Tensor ref) {
        f32(t, what);
        shape(t, what, ref.shape());
    }

    private static void disjoint(Tensor a, String an, Tensor b, String bn) {
        if (a.storage() == b.storage() && a.offset() < b.offset() + b.numel() && b.offset() < a.offset() + a.numel()) {
            throw new IllegalArgumentException("ssm " + an + " " + a + " must not overlap " + bn + " " + b);
        }
    }
}
