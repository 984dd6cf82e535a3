package org.kindling.ops;

import java.util.Arrays;

/**
 * Argument checks every {@link Backend} runs before a kernel, shared so that each backend rejects
 * bad calls with the same message naming the argument and the reason.
 */
public final class KernelChecks {
    private KernelChecks() {
    }

    /** {@code t}'s storage as the backend's own kind, checking its dtype and that it lives on {@code device}. */
    public static <S extends Storage> S storage(Tensor t, DType want, Class<S> kind, String device, String what) {
        if (t.dtype() != want) {
            throw new IllegalArgumentException(what + " must be " + want + ", got " + t);
        }
        if (!kind.isInstance(t.storage())) {
            throw new IllegalArgumentException(what + " is not on " + device + ": " + t);
        }
        return kind.cast(t.storage());
    }

    public static void sameNumel(Tensor a, String an, Tensor b, String bn) {
        if (a.numel() != b.numel()) {
            throw new IllegalArgumentException(an + " " + a + " and " + bn + " " + b + " differ in element count");
        }
    }

    /** The operands of {@link Backend#layerNormForward}: x, out [N, C]; mean, rstd [N]; weight, bias [C]. */
    public static void checkLayerNormForward(Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor weight, Tensor bias) {
        int rows = x.rows();
        int cols = x.cols();
        sameRows(out, "layerNorm out", x);
        numel(mean, "layerNorm mean", rows);
        numel(rstd, "layerNorm rstd", rows);
        numel(weight, "layerNorm weight", cols);
        numel(bias, "layerNorm bias", cols);
    }

    /** The operands of {@link Backend#rmsNormForward}: x, out [N, C]; rstd [N]; weight [C]. */
    public static void checkRmsNormForward(Tensor out, Tensor rstd, Tensor x, Tensor weight) {
        int rows = x.rows();
        int cols = x.cols();
        sameRows(out, "rmsNorm out", x);
        numel(rstd, "rmsNorm rstd", rows);
        numel(weight, "rmsNorm weight", cols);
    }

    /** The operands of {@link Backend#rmsNormBackward}: x, dx, dy [N, C]; weight, dweight [C]; rstd [N]. */
    public static void checkRmsNormBackward(Tensor dx, Tensor dweight, Tensor dy, Tensor x, Tensor weight, Tensor rstd) {
        int rows = x.rows();
        int cols = x.cols();
        sameRows(dx, "rmsNorm dx", x);
        sameRows(dy, "rmsNorm dy", x);
        numel(dweight, "rmsNorm dweight", cols);
        numel(weight, "rmsNorm weight", cols);
        numel(rstd, "rmsNorm rstd", rows);
    }

    /** The operands of {@link Backend#layerNormBackward}: x, dx, dy [N, C]; weight, dweight, dbias [C]; mean, rstd [N]. */
    public static void checkLayerNormBackward(Tensor dx, Tensor dweight, Tensor dbias, Tensor dy, Tensor x, Tensor weight,
                                              Tensor mean, Tensor rstd) {
        int rows = x.rows();
        int cols = x.cols();
        sameRows(dx, "layerNorm dx", x);
        sameRows(dy, "layerNorm dy", x);
        numel(dweight, "layerNorm dweight", cols);
        numel(dbias, "layerNorm dbias", cols);
        numel(weight, "layerNorm weight", cols);
        numel(mean, "layerNorm mean", rows);
        numel(rstd, "layerNorm rstd", rows);
    }

    /** The one F32 element a scalar accumulation writes. */
    public static void scalarOut(Tensor out, String what) {
        if (out.dtype() != DType.F32 || out.numel() != 1) {
            throw new IllegalArgumentException(what + " must be one F32 element, got " + out);
        }
    }

    public static void numel(Tensor t, String what, int expected) {
        if (t.numel() != expected) {
            throw new IllegalArgumentException(what + " must have " + expected + " elements, got " + t);
        }
    }

    /** {@code t} must have {@code ref}'s rows and columns. */
    public static void sameRows(Tensor t, String what, Tensor ref) {
        if (t.rows() != ref.rows() || t.cols() != ref.cols()) {
            throw new IllegalArgumentException(what + " " + t + " must be [" + ref.rows() + ", " + ref.cols() + "]");
        }
    }

    /**
     * Elements from one element-wise b value to the next for {@link Backend#binary}: a's element
     * count (no broadcast) or a's last dimension (b is one row).
     */
    public static int binaryPeriod(BinaryOp op, Tensor a, Tensor b) {
        if (b.numel() == a.numel()) {
            return a.numel();
        }
        if (b.numel() == a.cols()) {
            return a.cols();
        }
        throw new IllegalArgumentException("binary " + op + ": b " + b + " must match a " + a
                + " or its last dimension (" + a.cols() + ")");
    }

    /** Whether two tensors share any element. */
    public static boolean overlap(Tensor a, Tensor b) {
        return a.storage() == b.storage() && a.offset() < b.offset() + b.numel()
                && b.offset() < a.offset() + a.numel();
    }

    /**
     * Checks {@link Backend#scaleRows}: x [N, C] and out of x's shape, s [N], all F32; out is x
     * itself or apart from it, since rows are scaled in parallel.
     */
    public static void checkScaleRows(Tensor out, Tensor x, Tensor s) {
        if (out.dtype() != DType.F32 || x.dtype() != DType.F32 || s.dtype() != DType.F32) {
            throw new IllegalArgumentException("scaleRows out " + out + ", x " + x + " and s " + s + " must be F32");
        }
        if (!Arrays.equals(out.shape(), x.shape())) {
            throw new IllegalArgumentException("scaleRows out " + out + " must have x's shape " + x);
        }
        numel(s, "scaleRows s (one per row of x " + x + ")", x.rows());
        if (overlap(out, x) && out.offset() != x.offset()) {
            throw new IllegalArgumentException("scaleRows out " + out + " must be x " + x + " or not overlap it");
        }
    }

    /** Each of the {@code n} ids from {@code off} must index a row of a {@code vocab}-row table. */
    public static void checkIds(int[] ids, int off, int n, int vocab, String what) {
        for (int i = 0; i < n; i++) {
            int id = ids[off + i];
            if (id < 0 || id >= vocab) {
                throw new IllegalArgumentException(what + "[" + i + "] = " + id + " is outside [0, " + vocab + ")");
            }
        }
    }

    /** Cross-entropy targets: a class in [0, vocab) or the ignore index. */
    public static void checkTargets(int[] t, int off, int n, int vocab, int ignoreIndex) {
        for (int i = 0; i < n; i++) {
            int id = t[off + i];
            if (id != ignoreIndex && (id < 0 || id >= vocab)) {
                throw new IllegalArgumentException("cross-entropy targets[" + i + "] = " + id + " is outside [0, "
                        + vocab + ") and is not the ignore index " + ignoreIndex);
            }
        }
    }

    public static void checkDropout(float p) {
        if (!(p >= 0 && p < 1)) {
            throw new IllegalArgumentException("dropout probability must be in [0, 1), got " + p);
        }
    }

    /** {@code t} must hold every element {@code batch} matrices of {@code span} elements, {@code stride} apart, reach. */
    /**
     * The element type of a GEMM's A and B: both F32, or both BF16 (bf16 inputs, fp32
     * accumulation, as tensor cores take them); C is F32 either way.
     */
    public static DType gemmInputs(Tensor a, Tensor b, String what) {
        if (a.dtype() != b.dtype() || a.dtype() == DType.I32) {
            throw new IllegalArgumentException(what + " takes A and B both F32 or both BF16, got A " + a + " and B " + b);
        }
        return a.dtype();
    }

    public static void checkSpan(Tensor t, String what, long span, long stride, int batch) {
        long need = batchSpan(span, stride, batch);
        if (need > t.numel()) {
            throw new IllegalArgumentException("gemm " + what + " " + t + " holds " + t.numel()
                    + " elements but the layout needs " + need);
        }
    }

    /** Elements {@code batch} matrices of {@code span} elements, {@code stride} apart, cover from first to last. */
    public static long batchSpan(long span, long stride, int batch) {
        return span == 0 ? 0 : (long) (batch - 1) * stride + span;
    }
}
