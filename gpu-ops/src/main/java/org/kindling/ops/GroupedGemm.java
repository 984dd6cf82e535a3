package org.kindling.ops;

/**
 * The layout of a grouped GEMM (dropless MoE, MegaBlocks): the R rows of a token matrix are
 * grouped by offsets [E + 1] (group e owns rows offsets[e] ≤ row &lt; offsets[e+1], possibly none)
 * and each group meets its own expert matrix. {@code g} is written as the one product the whole
 * token matrix takes part in, tightly packed ({@link Gemm#of}, batch 1, any alpha and beta):
 * <ul>
 * <li>rows grouped ({@code !g.transA()}, g.m() = R): C[R, N] = A[R, K]·op(B_e) for B [E, K, N],
 * or [E, N, K] with {@code transB} — the forward pass C_e = A_e·B_e and the input gradient
 * dA_e = dC_e·B_eᵀ;</li>
 * <li>reduction grouped ({@code g.transA()}, {@code !g.transB()}, g.k() = R): C_e[M, N] =
 * A_eᵀ·B_e for A [R, M], B [R, N] and C [E, M, N] — the weight gradient dB_e = A_eᵀ·dC_e,
 * accumulated with beta = 1. An empty group still scales its C_e by beta.</li>
 * </ul>
 *
 * @param g the whole product's layout
 * @param offsets validated group offsets (E + 1 of them)
 */
public record GroupedGemm(Gemm g, int[] offsets) {

    public int experts() {
        return offsets.length - 1;
    }

    /** Rows of group e. */
    public int rows(int e) {
        return offsets[e + 1] - offsets[e];
    }

    public boolean reductionGrouped() {
        return g.transA();
    }

    /** Whether group e changes C: an empty group of the row-grouped form has no rows to write. */
    public boolean runs(int e) {
        return reductionGrouped() || rows(e) > 0;
    }

    /** The plain product of group e, over the views {@link #a}, {@link #b} and {@link #c} give. */
    public Gemm group(int e) {
        Gemm one = reductionGrouped() ? Gemm.of(true, false, g.m(), g.n(), rows(e))
                : Gemm.of(false, g.transB(), rows(e), g.n(), g.k());
        return one.scaled(g.alpha(), g.beta());
    }

    /** Where group e's part of a starts: its rows. */
    public int aStart(int e) {
        return offsets[e] * (reductionGrouped() ? g.m() : g.k());
    }

    /** Where group e's part of b starts: its expert matrix (row-grouped) or its rows (reduction-grouped). */
    public int bStart(int e) {
        return reductionGrouped() ? offsets[e] * g.n() : e * g.k() * g.n();
    }

    /** Where group e's part of c starts: its rows (row-grouped) or its expert matrix (reduction-grouped). */
    public int cStart(int e) {
        return reductionGrouped() ? e * g.m() * g.n() : offsets[e] * g.n();
    }

    /** Group e's part of a, as a flat view. */
    public Tensor a(Tensor a, int e) {
        return a.view(aStart(e), (int) group(e).spanA());
    }

    public Tensor b(Tensor b, int e) {
        return b.view(bStart(e), (int) group(e).spanB());
    }

    public Tensor c(Tensor c, int e) {
        return c.view(cStart(e), (int) group(e).spanC());
    }

    /** Checks the operands of {@link Backend#groupedGemm} and reads the group offsets. */
    public static GroupedGemm check(Gemm g, Tensor c, Tensor a, Tensor b, Tensor offsets) {
        if (g.batch() != 1 || !g.equals(Gemm.of(g.transA(), g.transB(), g.m(), g.n(), g.k()).scaled(g.alpha(), g.beta()))) {
            throw new IllegalArgumentException("grouped gemm takes a tightly packed single-product layout (Gemm.of), got " + g);
        }
        if (g.transA() && g.transB()) {
            throw new IllegalArgumentException("grouped gemm with transA groups the rows of A and B; B cannot be transposed");
        }
        int rows = g.transA() ? g.k() : g.m();
        if (offsets.dtype() != DType.I32 || offsets.numel() < 2) {
            throw new IllegalArgumentException("grouped gemm offsets must be I32 [E + 1] with E ≥ 1, got " + offsets);
        }
        int experts = offsets.numel() - 1;
        DType in = KernelChecks.gemmInputs(a, b, "grouped gemm");
        operand(a, in, "a", (long) rows * (g.transA() ? g.m() : g.k()), g.transA() ? "[" + rows + ", " + g.m() + "]"
                : "[" + rows + ", " + g.k() + "]");
        if (g.transA()) {
            operand(b, in, "b", (long) rows * g.n(), "[" + rows + ", " + g.n() + "]");
            operand(c, DType.F32, "c", (long) experts * g.m() * g.n(), "[" + experts + ", " + g.m() + ", " + g.n() + "]");
        } else {
            operand(b, in, "b", (long) experts * g.k() * g.n(), g.transB() ? "[" + experts + ", " + g.n() + ", " + g.k() + "]"
                    : "[" + experts + ", " + g.k() + ", " + g.n() + "]");
            operand(c, DType.F32, "c", (long) rows * g.n(), "[" + rows + ", " + g.n() + "]");
        }
        // Each group writes its part of c while later groups still read a and b.
        disjoint(c, a, "a");
        disjoint(c, b, "b");
        return new GroupedGemm(g, offsets(offsets, rows));
    }

    /**
     * The expert offsets, read back: routing computes them on the device, so no host copy exists
     * to pass. Checked to cover the {@code rows} rows of a; their dtype and length are checked above.
     */
    private static int[] offsets(Tensor offsets, int rows) {
        String what = "grouped gemm offsets";
        int[] c = offsets.toIntArray();
        Varlen.checkOffsets(c, what);
        if (c[c.length - 1] != rows) {
            throw new IllegalArgumentException(what + " ends at " + c[c.length - 1] + " but the tensor has " + rows + " rows");
        }
        return c;
    }

    private static void disjoint(Tensor c, Tensor t, String what) {
        if (c.storage() == t.storage() && c.offset() < t.offset() + t.numel() && t.offset() < c.offset() + c.numel()) {
            throw new IllegalArgumentException("grouped gemm c " + c + " must not overlap " + what + " " + t);
        }
    }

    private static void operand(Tensor t, DType dtype, String what, long numel, String shape) {
        if (t.dtype() != dtype || t.numel() != numel) {
            throw new IllegalArgumentException("grouped gemm " + what + " " + t + " must be " + dtype + " " + shape);
        }
    }
}
