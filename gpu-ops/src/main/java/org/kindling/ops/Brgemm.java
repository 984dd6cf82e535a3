package org.kindling.ops;

import java.util.ArrayList;
import java.util.List;

/**
 * Operands of {@link Backend#brgemm} and the block-sparse GEMMs: the three addressing modes of
 * the TPP batch-reduce GEMM as lists of views (list: any tensors; offset: element offsets into
 * one tensor; stride: a fixed step), and the checks every backend runs before the first product.
 */
public final class Brgemm {
    private Brgemm() {
    }

    /** Offset addressing: the {@code span}-element views of t starting at each offset. */
    public static List<Tensor> offsets(Tensor t, int[] offsets, long span) {
        List<Tensor> out = new ArrayList<>(offsets.length);
        for (int i = 0; i < offsets.length; i++) {
            if (offsets[i] < 0 || offsets[i] + span > t.numel()) {
                throw new IllegalArgumentException("brgemm offset[" + i + "] = " + offsets[i] + " with span " + span
                        + " is outside " + t);
            }
            out.add(t.view(offsets[i], (int) span));
        }
        return out;
    }

    /** Stride addressing: {@code count} views of t, {@code stride} elements apart from its start. */
    public static List<Tensor> strided(Tensor t, int count, long stride, long span) {
        if (count < 1 || stride < 0 || (long) (count - 1) * stride + span > t.numel()) {
            throw new IllegalArgumentException("brgemm stride addressing of " + count + " matrices " + stride
                    + " elements apart (span " + span + ") does not fit " + t);
        }
        int[] at = new int[count];
        for (int i = 0; i < count; i++) {
            at[i] = (int) (i * stride);
        }
        return offsets(t, at, span);
    }

    /** Checks a {@link Backend#brgemm} call: one layout, equal non-empty lists, C F32 and apart from every operand. */
    public static void check(Gemm g, Tensor c, List<Tensor> a, List<Tensor> b) {
        if (g.batch() != 1) {
            throw new IllegalArgumentException("brgemm takes a single-product layout; the lists give the pairs, got batch "
                    + g.batch());
        }
        if (a.isEmpty() || a.size() != b.size()) {
            throw new IllegalArgumentException("brgemm needs equal non-empty A and B lists, got " + a.size() + " and " + b.size());
        }
        if (c.dtype() != DType.F32) {
            throw new IllegalArgumentException("brgemm C " + c + " must be F32");
        }
        KernelChecks.checkSpan(c, "brgemm C", g.spanC(), 0, 1);
        DType in = KernelChecks.gemmInputs(a.get(0), b.get(0), "brgemm[0]");
        for (int i = 0; i < a.size(); i++) {
            if (KernelChecks.gemmInputs(a.get(i), b.get(i), "brgemm[" + i + "]") != in) {
                throw new IllegalArgumentException("brgemm pair " + i + " is " + a.get(i).dtype() + " where pair 0 is " + in);
            }
            KernelChecks.checkSpan(a.get(i), "brgemm A[" + i + "]", g.spanA(), 0, 1);
            KernelChecks.checkSpan(b.get(i), "brgemm B[" + i + "]", g.spanB(), 0, 1);
            if (KernelChecks.overlap(c, a.get(i)) || KernelChecks.overlap(c, b.get(i))) {
                throw new IllegalArgumentException("brgemm C " + c + " overlaps operand pair " + i);
            }
        }
    }

    /**
     * Checks the operands of a block-sparse GEMM: p [T, pCols] and q [T, qCols] with T ≥ 1,
     * w [layout.nnz(), bs, bs], all floating and pairwise disjoint. Returns T.
     */
    public static int checkBlockSparse(BlockLayout layout, Tensor p, String pn, int pCols, Tensor q, String qn, int qCols,
                                Tensor w, String wn) {
        String op = "block-sparse gemm ";
        if (p.numel() == 0 || p.numel() % pCols != 0) {
            throw new IllegalArgumentException(op + pn + " " + p + " must be [T, " + pCols + "] with T >= 1 for " + layout);
        }
        int t = p.numel() / pCols;
        if ((long) t * qCols != q.numel()) {
            throw new IllegalArgumentException(op + qn + " " + q + " must be [" + t + ", " + qCols + "] for " + layout);
        }
        if (w.numel() != layout.weightNumel()) {
            throw new IllegalArgumentException(op + wn + " " + w + " must hold nnz·bs² = " + layout.weightNumel()
                    + " elements for " + layout);
        }
        for (Tensor x : List.of(p, q, w)) {
            if (x.dtype() == DType.I32) {
                throw new IllegalArgumentException(op + "operand " + x + " must be floating");
            }
        }
        if (KernelChecks.overlap(p, q) || KernelChecks.overlap(p, w) || KernelChecks.overlap(q, w)) {
            throw new IllegalArgumentException(op + pn + ", " + qn + " and " + wn + " must not overlap");
        }
        return t;
    }

    /** Checks a {@link Backend#transpose}: same dtype and element count, no overlap. */
    public static void checkTranspose(Tensor out, Tensor x) {
        if (out.dtype() != x.dtype() || out.numel() != x.numel()) {
            throw new IllegalArgumentException("transpose out " + out + " must be " + x.dtype() + " with " + x.numel()
                    + " elements like x " + x);
        }
        if (x.dtype() == DType.I32) {
            throw new IllegalArgumentException("transpose takes a floating tensor, got " + x);
        }
        if (KernelChecks.overlap(out, x)) {
            throw new IllegalArgumentException("transpose out " + out + " must not overlap x " + x);
        }
    }
}
