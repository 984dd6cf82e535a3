package org.kindling.ops.cpu;

import org.kindling.ops.BlockLayout;
import org.kindling.ops.DType;
import org.kindling.ops.Gemm;
import org.kindling.ops.KernelChecks;
import org.kindling.ops.Tensor;

/**
 * The CPU's block-sparse GEMMs for fp32 operands. They walk the layout's runs of block rows with
 * the same columns ({@link BlockLayout#runs}) rather than single block rows: a run of g rows over
 * cnt columns is one GEMM of width g·bs against the run's cnt·bs gathered input columns. A flat
 * butterfly stretched to a wide output (the MLP's up projection) has runs of OC/IC rows, so its
 * products run at the width of a run instead of one block (32 outputs) at a time. A run whose
 * columns lie close together (at most {@link #MAX_SPAN_RATIO} times as many blocks from its first
 * to its last as it keeps, as a flat butterfly's small strides do) multiplies the whole span in
 * place, the missing blocks as zero weights: no copy of x, and dx takes the product directly. Other
 * runs gather their columns side by side once per run.
 */
final class CpuBlockSparse {
    /** A row-major float GEMM on arrays: the backend's thread split of one product. */
    @FunctionalInterface
    interface Sgemm {
        void run(Gemm g, float[] c, int oc, float[] a, int oa, float[] b, int ob);
    }

    /** Spans up to this many times the kept blocks are multiplied whole rather than gathered. */
    static final int MAX_SPAN_RATIO = 2;

    private final CpuDevice device;
    private final CpuPool pool;
    private final Sgemm sgemm;

    CpuBlockSparse(CpuDevice device, CpuPool pool, Sgemm sgemm) {
        this.device = device;
        this.pool = pool;
        this.sgemm = sgemm;
    }

    static boolean handles(Tensor... operands) {
        for (Tensor t : operands) {
            if (t.dtype() != DType.F32) {
                return false;
            }
        }
        return true;
    }

    /** y [T, rows] = x [T, cols]·Wᵀ; y already zero where the layout has empty rows. */
    void forward(int t, Tensor y, Tensor x, Tensor w, BlockLayout l) {
        float[] yv = floats(y);
        for (int g = 0; g < l.runs(); g++) {
            Run run = Run.of(l, g);
            if (run.cnt == 0) {
                continue;
            }
            try (Columns xc = columns(floats(x), x.offset(), l.cols(), t, run, l.blockSize());
                 Tensor wr = device.scratch(DType.F32, run.width * run.depth)) {
                float[] wp = floats(wr);
                packWeights(floats(w), w.offset(), l, run, wp, wr.offset());
                Gemm gm = new Gemm(false, true, t, run.width, run.depth, xc.ld, run.depth, l.rows(), 1f, 0f, 1, 0, 0, 0);
                sgemm.run(gm, yv, y.offset() + run.r0 * l.blockSize(), xc.v, xc.off, wp, wr.offset());
            }
        }
    }

    /** dx [T, cols] += dy [T, rows]·W, one run's rows of dy (in place) at a time. */
    void backwardInput(int t, Tensor dx, Tensor dy, Tensor w, BlockLayout l) {
        float[] dxv = floats(dx);
        int bs = l.blockSize();
        for (int g = 0; g < l.runs(); g++) {
            Run run = Run.of(l, g);
            if (run.cnt == 0) {
                continue;
            }
            try (Tensor wr = device.scratch(DType.F32, run.width * run.depth)) {
                float[] wp = floats(wr);
                packWeights(floats(w), w.offset(), l, run, wp, wr.offset());
                int ody = dy.offset() + run.r0 * bs;
                if (run.spanned) {
                    // The span's missing blocks have zero weights: dx gains zeros there.
                    Gemm gm = new Gemm(false, false, t, run.depth, run.width, l.rows(), run.depth, l.cols(), 1f, 1f, 1, 0, 0, 0);
                    sgemm.run(gm, dxv, dx.offset() + run.cols[0] * bs, floats(dy), ody, wp, wr.offset());
                    continue;
                }
                try (Tensor d = device.scratch(DType.F32, t * run.depth)) {
                    float[] dv = floats(d);
                    int od = d.offset();
                    Gemm gm = new Gemm(false, false, t, run.depth, run.width, l.rows(), run.depth, run.depth, 1f, 0f, 1, 0, 0, 0);
                    sgemm.run(gm, dv, od, floats(dy), ody, wp, wr.offset());
                    int odx = dx.offset();
                    int ldx = l.cols();
                    pool.parallelFor(t, 16, (lo, hi) -> {
                        for (int i = lo; i < hi; i++) {
                            for (int k = 0; k < run.cnt; k++) {
                                int src = od + i * run.depth + k * bs;
                                int dst = odx + i * ldx + run.cols[k] * bs;
                                for (int j = 0; j < bs; j++) {
                                    dxv[dst + j] += dv[src + j];
                                }
                            }
                        }
                    });
                }
            }
        }
    }

    /** dw [nnz, bs, bs] += dyᵀ·x on the kept blocks: one [width, depth] product per run, added into its blocks. */
    void backwardWeight(int t, Tensor dw, Tensor dy, Tensor x, BlockLayout l) {
        float[] dwv = floats(dw);
        int bs = l.blockSize();
        for (int g = 0; g < l.runs(); g++) {
            Run run = Run.of(l, g);
            if (run.cnt == 0) {
                continue;
            }
            try (Columns xc = columns(floats(x), x.offset(), l.cols(), t, run, bs);
                 Tensor e = device.scratch(DType.F32, run.width * run.depth)) {
                float[] ev = floats(e);
                int oe = e.offset();
                Gemm gm = new Gemm(true, false, run.width, run.depth, t, l.rows(), xc.ld, run.depth, 1f, 0f, 1, 0, 0, 0);
                sgemm.run(gm, ev, oe, floats(dy), dy.offset() + run.r0 * bs, xc.v, xc.off);
                int odw = dw.offset();
                pool.parallelFor(run.width, 8, (lo, hi) -> {
                    for (int row = lo; row < hi; row++) {
                        int q = row / bs;
                        int o = row % bs;
                        int first = l.rowStart(run.r0 + q);
                        for (int k = 0; k < run.cnt; k++) {
                            int src = oe + row * run.depth + run.at(k) * bs;
                            int dst = odw + (first + k) * bs * bs + o * bs;
                            for (int i = 0; i < bs; i++) {
                                dwv[dst + i] += ev[src + i];
                            }
                        }
                    }
                });
            }
        }
    }

    /**
     * Run g of the layout: block rows r0 … r0 + width/bs − 1, each over the same cnt block
     * columns; width = rows·bs outputs. Spanned, its depth is the span of its columns (from the
     * first to the last, in place in x); else the cnt gathered columns.
     */
    private record Run(int r0, int cnt, int[] cols, int width, int depth, boolean spanned) {
        static Run of(BlockLayout l, int g) {
            int r0 = l.runStart(g);
            int rows = l.runStart(g + 1) - r0;
            int first = l.rowStart(r0);
            int cnt = l.rowStart(r0 + 1) - first;
            int[] cols = new int[cnt];
            for (int k = 0; k < cnt; k++) {
                cols[k] = l.col(first + k);
            }
            int bs = l.blockSize();
            int span = cnt == 0 ? 0 : cols[cnt - 1] - cols[0] + 1;
            boolean spanned = span <= MAX_SPAN_RATIO * cnt;
            return new Run(r0, cnt, cols, rows * bs, (spanned ? span : cnt) * bs, spanned);
        }

        /** Where the run's k-th block sits among its depth's blocks. */
        int at(int k) {
            return spanned ? cols[k] - cols[0] : k;
        }
    }

    /** A run's input columns side by side: its span in place in x, or its columns gathered into scratch. */
    private record Columns(float[] v, int off, int ld, Tensor scratch) implements AutoCloseable {
        @Override
        public void close() {
            if (scratch != null) {
                scratch.close();
            }
        }
    }

    private Columns columns(float[] src, int off, int ld, int t, Run run, int bs) {
        if (run.spanned) {
            return new Columns(src, off + run.cols[0] * bs, ld, null);
        }
        Tensor s = device.scratch(DType.F32, t * run.depth);
        float[] dst = floats(s);
        int os = s.offset();
        pool.parallelFor(t, 16, (lo, hi) -> {
            for (int i = lo; i < hi; i++) {
                for (int k = 0; k < run.cnt; k++) {
                    System.arraycopy(src, off + i * ld + run.cols[k] * bs, dst, os + i * run.depth + k * bs, bs);
                }
            }
        });
        return new Columns(dst, os, run.depth, s);
    }

    /**
     * The run's weight blocks as one [width, depth] matrix: row q·bs + o, column at(k)·bs + i; a
     * span's missing blocks stay zero (dst is zero-filled scratch).
     */
    private static void packWeights(float[] w, int ow, BlockLayout l, Run run, float[] dst, int od) {
        int bs = l.blockSize();
        for (int row = 0; row < run.width; row++) {
            int q = row / bs;
            int o = row % bs;
            int first = l.rowStart(run.r0 + q);
            for (int k = 0; k < run.cnt; k++) {
                System.arraycopy(w, ow + (first + k) * bs * bs + o * bs, dst, od + row * run.depth + run.at(k) * bs, bs);
            }
        }
    }

    private static float[] floats(Tensor t) {
        return KernelChecks.storage(t, DType.F32, CpuStorage.class, "the CPU", "block-sparse operand").floats();
    }
}
