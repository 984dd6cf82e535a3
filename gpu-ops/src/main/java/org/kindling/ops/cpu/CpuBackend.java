package org.kindling.ops.cpu;

import static org.kindling.ops.KernelChecks.binaryPeriod;
import static org.kindling.ops.KernelChecks.checkDropout;
import static org.kindling.ops.KernelChecks.checkIds;
import static org.kindling.ops.KernelChecks.checkScaleRows;
import static org.kindling.ops.KernelChecks.checkSpan;
import static org.kindling.ops.KernelChecks.checkTargets;
import static org.kindling.ops.KernelChecks.gemmInputs;
import static org.kindling.ops.KernelChecks.numel;
import static org.kindling.ops.KernelChecks.sameNumel;
import static org.kindling.ops.KernelChecks.sameRows;

import java.util.Arrays;
import java.util.List;
import jdk.incubator.vector.FloatVector;
import org.kindling.ops.AdamW;
import org.kindling.ops.Attention;
import org.kindling.ops.BF16;
import org.kindling.ops.Backend;
import org.kindling.ops.BinaryOp;
import org.kindling.ops.BlockLayout;
import org.kindling.ops.Brgemm;
import org.kindling.ops.DType;
import org.kindling.ops.DropoutMask;
import org.kindling.ops.FavorFeatures;
import org.kindling.ops.Gemm;
import org.kindling.ops.GroupedGemm;
import org.kindling.ops.HostStore;
import org.kindling.ops.KernelChecks;
import org.kindling.ops.MoeRouting;
import org.kindling.ops.Noise;
import org.kindling.ops.ReduceOp;
import org.kindling.ops.RowMap;
import org.kindling.ops.Skein;
import org.kindling.ops.Tensor;
import org.kindling.ops.TopK;
import org.kindling.ops.UnaryOp;
import org.kindling.ops.Varlen;

/**
 * Java kernels over heap arrays, parallel over rows (or columns, where rows would race) on a
 * {@link CpuPool}. GEMM goes to netlib BLAS: OpenBLAS through JNI when the system has it,
 * otherwise the Java Vector API implementation.
 */
final class CpuBackend implements Backend {
    /** Elements per chunk below which a loop is not worth splitting. */
    private static final int GRAIN = 1 << 14;
    /** Fixed reduction block: sums are combined block by block, whatever the thread count. */
    private static final int SUM_BLOCK = 1 << 13;
    /** Below this many multiply-adds a GEMM runs on one thread. */
    private static final double GEMM_SERIAL_FLOPS = 2.0 * 64 * 64 * 64;

    private final CpuPool pool;
    private final CpuAttention attention;
    private final CpuDevice device;
    private final CpuLinearAttention linearAttention;
    private final CpuSkein skein;
    private final CpuCausalConv causalConv;
    private final CpuSsmConv ssmConv;
    private final CpuBlockSparse blockSparse;

    CpuBackend(CpuDevice device, CpuPool pool) {
        this.device = device;
        this.pool = pool;
        this.attention = new CpuAttention(device, pool);
        this.linearAttention = new CpuLinearAttention(device, pool);
        this.skein = new CpuSkein(device, pool);
        this.causalConv = new CpuCausalConv(device, pool);
        this.ssmConv = new CpuSsmConv(device, pool, causalConv);
        this.blockSparse = new CpuBlockSparse(device, pool, this::gemmSplit);
    }

    @Override
    public String name() {
        return "cpu";
    }

    @Override
    public String gemmImpl() {
        return Blas.IMPL;
    }

    // ---- argument checks ----

    private static CpuStorage storage(Tensor t, DType want, String what) {
        return KernelChecks.storage(t, want, CpuStorage.class, "the CPU", what);
    }

    private static float[] f32(Tensor t, String what) {
        return storage(t, DType.F32, what).floats();
    }

    private static int[] i32(Tensor t, String what) {
        return storage(t, DType.I32, what).ints();
    }

    // ---- host transfers ----

    @Override
    public void copyFromHost(Tensor dst, float[] src) {
        if (src.length != dst.numel()) {
            throw new IllegalArgumentException(src.length + " host floats for " + dst);
        }
        if (dst.dtype() == DType.BF16) {
            short[] h = storage(dst, DType.BF16, "dst").shorts();
            for (int i = 0; i < src.length; i++) {
                h[dst.offset() + i] = BF16.fromFloat(src[i]);
            }
        } else {
            System.arraycopy(src, 0, f32(dst, "dst"), dst.offset(), src.length);
        }
    }

    @Override
    public void copyFromHost(Tensor dst, int[] src) {
        if (src.length != dst.numel()) {
            throw new IllegalArgumentException(src.length + " host ints for " + dst);
        }
        System.arraycopy(src, 0, i32(dst, "dst"), dst.offset(), src.length);
    }

    @Override
    public void copyToHost(float[] dst, Tensor src) {
        if (dst.length != src.numel()) {
            throw new IllegalArgumentException(dst.length + " host floats for " + src);
        }
        if (src.dtype() == DType.BF16) {
            short[] h = storage(src, DType.BF16, "src").shorts();
            for (int i = 0; i < dst.length; i++) {
                dst[i] = BF16.toFloat(h[src.offset() + i]);
            }
        } else {
            System.arraycopy(f32(src, "src"), src.offset(), dst, 0, dst.length);
        }
    }

    @Override
    public void copyToStore(HostStore dst, long offset, Tensor src) {
        if (src.dtype() == DType.BF16) {
            Backend.super.copyToStore(dst, offset, src);
            return;
        }
        dst.put(offset, f32(src, "src"), src.offset(), src.numel());
    }

    @Override
    public void copyFromStore(Tensor dst, HostStore src, long offset) {
        if (dst.dtype() == DType.BF16) {
            Backend.super.copyFromStore(dst, src, offset);
            return;
        }
        src.get(offset, f32(dst, "dst"), dst.offset(), dst.numel());
    }

    @Override
    public void copyToHost(int[] dst, Tensor src) {
        if (dst.length != src.numel()) {
            throw new IllegalArgumentException(dst.length + " host ints for " + src);
        }
        System.arraycopy(i32(src, "src"), src.offset(), dst, 0, dst.length);
    }

    // ---- data movement ----

    @Override
    public void fill(Tensor out, float value) {
        int o = out.offset();
        switch (out.dtype()) {
            case F32 -> {
                float[] a = f32(out, "out");
                pool.parallelFor(out.numel(), GRAIN * 4, (lo, hi) -> java.util.Arrays.fill(a, o + lo, o + hi, value));
            }
            case BF16 -> {
                short[] a = storage(out, DType.BF16, "out").shorts();
                short h = BF16.fromFloat(value);
                pool.parallelFor(out.numel(), GRAIN * 4, (lo, hi) -> java.util.Arrays.fill(a, o + lo, o + hi, h));
            }
            case I32 -> {
                if (value != (int) value) {
                    throw new IllegalArgumentException("cannot fill I32 " + out + " with " + value);
                }
                int[] a = i32(out, "out");
                pool.parallelFor(out.numel(), GRAIN * 4, (lo, hi) -> java.util.Arrays.fill(a, o + lo, o + hi, (int) value));
            }
        }
    }

    @Override
    public void copy(Tensor dst, Tensor src) {
        sameNumel(dst, "dst", src, "src");
        int n = src.numel();
        int d0 = dst.offset();
        int s0 = src.offset();
        if (src.dtype() == dst.dtype()) {
            Object s = switch (src.dtype()) {
                case F32 -> f32(src, "src");
                case I32 -> i32(src, "src");
                case BF16 -> storage(src, DType.BF16, "src").shorts();
            };
            Object d = switch (dst.dtype()) {
                case F32 -> f32(dst, "dst");
                case I32 -> i32(dst, "dst");
                case BF16 -> storage(dst, DType.BF16, "dst").shorts();
            };
            pool.parallelFor(n, GRAIN * 4, (lo, hi) -> System.arraycopy(s, s0 + lo, d, d0 + lo, hi - lo));
        } else if (src.dtype() == DType.F32 && dst.dtype() == DType.BF16) {
            float[] s = f32(src, "src");
            short[] d = storage(dst, DType.BF16, "dst").shorts();
            pool.parallelFor(n, GRAIN, (lo, hi) -> {
                for (int i = lo; i < hi; i++) {
                    d[d0 + i] = BF16.fromFloat(s[s0 + i]);
                }
            });
        } else if (src.dtype() == DType.BF16 && dst.dtype() == DType.F32) {
            short[] s = storage(src, DType.BF16, "src").shorts();
            float[] d = f32(dst, "dst");
            pool.parallelFor(n, GRAIN, (lo, hi) -> {
                for (int i = lo; i < hi; i++) {
                    d[d0 + i] = BF16.toFloat(s[s0 + i]);
                }
            });
        } else {
            throw new IllegalArgumentException("copy from " + src.dtype() + " to " + dst.dtype() + " is not supported");
        }
    }

    // ---- matrix products ----

    @Override
    public void gemm(Gemm g, Tensor c, Tensor a, Tensor b) {
        DType in = gemmInputs(a, b, "gemm");
        float[] cv = f32(c, "gemm C");
        checkSpan(a, "A", g.spanA(), g.strideA(), g.batch());
        checkSpan(b, "B", g.spanB(), g.strideB(), g.batch());
        checkSpan(c, "C", g.spanC(), g.strideC(), g.batch());
        Panel ap = Panel.of(a, in, KernelChecks.batchSpan(g.spanA(), g.strideA(), g.batch()), "gemm A");
        Panel bp = Panel.of(b, in, KernelChecks.batchSpan(g.spanB(), g.strideB(), g.batch()), "gemm B");
        if (g.batch() >= pool.threads() && g.batch() > 1) {
            pool.parallelFor(g.batch(), 1, (lo, hi) -> {
                for (int i = lo; i < hi; i++) {
                    gemmSerial(g, cv, c.offset() + (int) (i * g.strideC()), ap.v, ap.off + (int) (i * g.strideA()),
                            bp.v, bp.off + (int) (i * g.strideB()));
                }
            });
        } else {
            for (int i = 0; i < g.batch(); i++) {
                gemmSplit(g, cv, c.offset() + (int) (i * g.strideC()), ap.v, ap.off + (int) (i * g.strideA()),
                        bp.v, bp.off + (int) (i * g.strideB()));
            }
        }
    }

    @Override
    public void gemmBatched(Gemm g, List<Tensor> c, List<Tensor> a, List<Tensor> b) {
        if (c.size() != a.size() || c.size() != b.size()) {
            throw new IllegalArgumentException("gemmBatched needs as many A (" + a.size() + ") and B (" + b.size()
                    + ") as C (" + c.size() + ") matrices");
        }
        if (g.batch() != 1) {
            throw new IllegalArgumentException("gemmBatched takes a single-matrix layout; the lists give the batch");
        }
        int count = c.size();
        DType[] in = new DType[count];
        float[][] cv = new float[count][];
        // Every triple is checked before the first product, so a bad one leaves every C unchanged.
        for (int i = 0; i < count; i++) {
            in[i] = gemmInputs(a.get(i), b.get(i), "gemmBatched[" + i + "]");
            cv[i] = f32(c.get(i), "gemmBatched C[" + i + "]");
            checkSpan(a.get(i), "A[" + i + "]", g.spanA(), 0, 1);
            checkSpan(b.get(i), "B[" + i + "]", g.spanB(), 0, 1);
            checkSpan(c.get(i), "C[" + i + "]", g.spanC(), 0, 1);
        }
        Panel[] ap = new Panel[count];
        Panel[] bp = new Panel[count];
        for (int i = 0; i < count; i++) {
            ap[i] = Panel.of(a.get(i), in[i], g.spanA(), "gemmBatched A[" + i + "]");
            bp[i] = Panel.of(b.get(i), in[i], g.spanB(), "gemmBatched B[" + i + "]");
        }
        if (count >= pool.threads() && count > 1) {
            pool.parallelFor(count, 1, (lo, hi) -> {
                for (int i = lo; i < hi; i++) {
                    gemmSerial(g, cv[i], c.get(i).offset(), ap[i].v, ap[i].off, bp[i].v, bp[i].off);
                }
            });
        } else {
            for (int i = 0; i < count; i++) {
                gemmSplit(g, cv[i], c.get(i).offset(), ap[i].v, ap[i].off, bp[i].v, bp[i].off);
            }
        }
    }

    /**
     * Batch-reduce GEMM as one GEMM over the concatenated reduction: the pairs are packed into
     * A' [M, count·K] and B' [count·K, N], so C meets the whole sum in one pass of the BLAS kernel
     * (one read and write of C, one thread split) rather than count passes.
     */
    @Override
    public void brgemm(Gemm g, Tensor c, List<Tensor> a, List<Tensor> b) {
        Brgemm.check(g, c, a, b);
        int count = a.size();
        int m = g.m();
        int n = g.n();
        int k = g.k();
        int kk = Math.multiplyExact(count, k);
        DType in = a.get(0).dtype();
        Panel[] as = new Panel[count];
        Panel[] bs = new Panel[count];
        for (int i = 0; i < count; i++) {
            as[i] = Panel.of(a.get(i), in, g.spanA(), "brgemm A[" + i + "]");
            bs[i] = Panel.of(b.get(i), in, g.spanB(), "brgemm B[" + i + "]");
        }
        // Pairs that already lie side by side (Aᵢ the next K columns, Bᵢ the next K rows of one
        // array) are the big operands as they stand: no copy.
        boolean aInPlace = !g.transA() && g.lda() >= kk && consecutive(as, k);
        boolean bInPlace = !g.transB() && g.ldb() == n && consecutive(bs, (long) k * n);
        // The packed copies come from the device's scratch pool: block-sparse layers call this once
        // per block row every step, and fresh arrays would be garbage of the size of the operands.
        try (Tensor aPacked = aInPlace ? null : device.scratch(DType.F32, Math.multiplyExact(m, kk));
             Tensor bPacked = bInPlace ? null : device.scratch(DType.F32, Math.multiplyExact(kk, n))) {
            brgemmPacked(g, c, as, bs, aPacked, bPacked);
        }
    }

    /** {@link #brgemm} once its operands are known: packs those that are not in place into the scratch given. */
    private void brgemmPacked(Gemm g, Tensor c, Panel[] as, Panel[] bs, Tensor aPacked, Tensor bPacked) {
        int count = as.length;
        int m = g.m();
        int n = g.n();
        int k = g.k();
        int kk = count * k;
        boolean aInPlace = aPacked == null;
        boolean bInPlace = bPacked == null;
        float[] ap = aInPlace ? as[0].v : f32(aPacked, "brgemm packed A");
        float[] bp = bInPlace ? bs[0].v : f32(bPacked, "brgemm packed B");
        int oap = aInPlace ? as[0].off : aPacked.offset();
        int obp = bInPlace ? bs[0].off : bPacked.offset();
        if (!aInPlace) {
            pool.parallelFor(m, 16, (lo, hi) -> {
                for (int r = lo; r < hi; r++) {
                    for (int i = 0; i < count; i++) {
                        float[] av = as[i].v;
                        int oa = as[i].off;
                        int dst = oap + r * kk + i * k;
                        if (g.transA()) {
                            for (int p = 0; p < k; p++) {
                                ap[dst + p] = av[oa + p * g.lda() + r];
                            }
                        } else {
                            System.arraycopy(av, oa + r * g.lda(), ap, dst, k);
                        }
                    }
                }
            });
        }
        if (!bInPlace) {
            pool.parallelFor(kk, 16, (lo, hi) -> {
                for (int row = lo; row < hi; row++) {
                    float[] bv = bs[row / k].v;
                    int ob = bs[row / k].off;
                    int p = row % k;
                    if (g.transB()) {
                        for (int j = 0; j < n; j++) {
                            bp[obp + row * n + j] = bv[ob + j * g.ldb() + p];
                        }
                    } else {
                        System.arraycopy(bv, ob + p * g.ldb(), bp, obp + row * n, n);
                    }
                }
            });
        }
        Gemm whole = new Gemm(false, false, m, n, kk, aInPlace ? g.lda() : Math.max(1, kk), Math.max(1, n), g.ldc(),
                g.alpha(), g.beta(), 1, 0, 0, 0);
        gemmSplit(whole, f32(c, "brgemm C"), c.offset(), ap, oap, bp, obp);
    }

    @Override
    public void blockSparseLinear(Tensor y, Tensor x, Tensor w, BlockLayout layout) {
        int t = Brgemm.checkBlockSparse(layout, y, "y", layout.rows(), x, "x", layout.cols(), w, "w");
        if (!CpuBlockSparse.handles(y, x, w)) {
            Backend.super.blockSparseLinear(y, x, w, layout);
            return;
        }
        if (layout.hasEmptyRow()) {
            fill(y, 0f);
        }
        blockSparse.forward(t, y, x, w, layout);
    }

    @Override
    public void blockSparseLinearBackwardInput(Tensor dx, Tensor dy, Tensor w, BlockLayout layout) {
        int t = Brgemm.checkBlockSparse(layout, dx, "dx", layout.cols(), dy, "dy", layout.rows(), w, "w");
        if (!CpuBlockSparse.handles(dx, dy, w)) {
            Backend.super.blockSparseLinearBackwardInput(dx, dy, w, layout);
            return;
        }
        blockSparse.backwardInput(t, dx, dy, w, layout);
    }

    @Override
    public void blockSparseLinearBackwardWeight(Tensor dw, Tensor dy, Tensor x, BlockLayout layout) {
        int t = Brgemm.checkBlockSparse(layout, dy, "dy", layout.rows(), x, "x", layout.cols(), dw, "dw");
        if (!CpuBlockSparse.handles(dw, dy, x)) {
            Backend.super.blockSparseLinearBackwardWeight(dw, dy, x, layout);
            return;
        }
        blockSparse.backwardWeight(t, dw, dy, x, layout);
    }

    /** Whether the panels share one array with panel i starting {@code step} elements after panel i − 1. */
    private static boolean consecutive(Panel[] p, long step) {
        for (int i = 1; i < p.length; i++) {
            if (p[i].v != p[0].v || p[i].off != p[0].off + i * step) {
                return false;
            }
        }
        return true;
    }

    /** Tiled so both the rows read and the rows written stay in cache; tiles of rows run in parallel. */
    @Override
    public void transpose(Tensor out, Tensor x) {
        Brgemm.checkTranspose(out, x);
        int n = x.rows();
        int c = x.cols();
        int tile = 32;
        int ox = x.offset();
        int oo = out.offset();
        if (x.dtype() == DType.F32) {
            float[] xv = f32(x, "transpose x");
            float[] ov = f32(out, "transpose out");
            pool.parallelFor((n + tile - 1) / tile, 1, (lo, hi) -> {
                for (int i0 = lo * tile; i0 < Math.min(n, hi * tile); i0 += tile) {
                    for (int j0 = 0; j0 < c; j0 += tile) {
                        for (int i = i0; i < Math.min(n, i0 + tile); i++) {
                            for (int j = j0; j < Math.min(c, j0 + tile); j++) {
                                ov[oo + j * n + i] = xv[ox + i * c + j];
                            }
                        }
                    }
                }
            });
        } else {
            short[] xv = storage(x, DType.BF16, "transpose x").shorts();
            short[] ov = storage(out, DType.BF16, "transpose out").shorts();
            pool.parallelFor((n + tile - 1) / tile, 1, (lo, hi) -> {
                for (int i0 = lo * tile; i0 < Math.min(n, hi * tile); i0 += tile) {
                    for (int j0 = 0; j0 < c; j0 += tile) {
                        for (int i = i0; i < Math.min(n, i0 + tile); i++) {
                            for (int j = j0; j < Math.min(c, j0 + tile); j++) {
                                ov[oo + j * n + i] = xv[ox + i * c + j];
                            }
                        }
                    }
                }
            });
        }
    }

    /**
     * A GEMM operand as floats for the sgemm path: an F32 tensor's own array, or a BF16 tensor's
     * span widened to float (exact: every bfloat16 is a float), so BF16 products accumulate in
     * fp32 exactly as F32 ones do.
     */
    private record Panel(float[] v, int off) {
        static Panel of(Tensor t, DType in, long span, String what) {
            if (in == DType.F32) {
                return new Panel(f32(t, what), t.offset());
            }
            short[] h = storage(t, DType.BF16, what).shorts();
            float[] w = new float[(int) span];
            int o = t.offset();
            for (int i = 0; i < w.length; i++) {
                w[i] = BF16.toFloat(h[o + i]);
            }
            return new Panel(w, 0);
        }
    }

    /** One product, its rows (or columns, when C is wide) split across the pool. */
    private void gemmSplit(Gemm g, float[] c, int oc, float[] a, int oa, float[] b, int ob) {
        int m = g.m();
        int n = g.n();
        if (pool.threads() == 1 || 2.0 * m * n * g.k() < GEMM_SERIAL_FLOPS) {
            gemmSerial(g, c, oc, a, oa, b, ob);
        } else if (m >= n) {
            pool.parallelFor(m, 8, (lo, hi) -> sgemm(g, hi - lo, n, c, oc + lo * g.ldc(),
                    a, oa + (g.transA() ? lo : lo * g.lda()), b, ob));
        } else {
            pool.parallelFor(n, 8, (lo, hi) -> sgemm(g, m, hi - lo, c, oc + lo,
                    a, oa, b, ob + (g.transB() ? lo * g.ldb() : lo)));
        }
    }

    private static void gemmSerial(Gemm g, float[] c, int oc, float[] a, int oa, float[] b, int ob) {
        sgemm(g, g.m(), g.n(), c, oc, a, oa, b, ob);
    }

    private static void sgemm(Gemm g, int m, int n, float[] c, int oc, float[] a, int oa, float[] b, int ob) {
        Blas.sgemm(g.transA(), g.transB(), m, n, g.k(), g.alpha(), a, oa, g.lda(), b, ob, g.ldb(), g.beta(), c, oc, g.ldc());
    }

    // ---- elementwise ----

    @Override
    public void unary(UnaryOp op, Tensor out, Tensor x) {
        sameNumel(out, "out", x, "x");
        float[] o = f32(out, "out");
        float[] xv = f32(x, "x");
        int oo = out.offset();
        int ox = x.offset();
        pool.parallelFor(x.numel(), GRAIN, (lo, hi) -> {
            switch (op) {
                case COPY -> System.arraycopy(xv, ox + lo, o, oo + lo, hi - lo);
                case NEG -> {
                    for (int i = lo; i < hi; i++) {
                        o[oo + i] = -xv[ox + i];
                    }
                }
                case ABS -> {
                    for (int i = lo; i < hi; i++) {
                        o[oo + i] = Math.abs(xv[ox + i]);
                    }
                }
                case SQUARE -> {
                    for (int i = lo; i < hi; i++) {
                        float v = xv[ox + i];
                        o[oo + i] = v * v;
                    }
                }
                case SQRT -> {
                    for (int i = lo; i < hi; i++) {
                        o[oo + i] = (float) Math.sqrt(xv[ox + i]);
                    }
                }
                case RECIPROCAL -> {
                    for (int i = lo; i < hi; i++) {
                        o[oo + i] = 1f / xv[ox + i];
                    }
                }
                case EXP -> {
                    for (int i = lo; i < hi; i++) {
                        o[oo + i] = (float) Math.exp(xv[ox + i]);
                    }
                }
                case LOG -> {
                    for (int i = lo; i < hi; i++) {
                        o[oo + i] = (float) Math.log(xv[ox + i]);
                    }
                }
                case TANH -> {
                    for (int i = lo; i < hi; i++) {
                        o[oo + i] = (float) Math.tanh(xv[ox + i]);
                    }
                }
                case SIGMOID -> {
                    for (int i = lo; i < hi; i++) {
                        o[oo + i] = (float) (1.0 / (1.0 + Math.exp(-xv[ox + i])));
                    }
                }
                case RELU -> {
                    for (int i = lo; i < hi; i++) {
                        float v = xv[ox + i];
                        o[oo + i] = v > 0f ? v : 0f;
                    }
                }
                case ELU_PLUS_ONE -> {
                    for (int i = lo; i < hi; i++) {
                        float v = xv[ox + i];
                        o[oo + i] = v > 0f ? v + 1f : (float) Math.exp(v);
                    }
                }
                case COS -> {
                    for (int i = lo; i < hi; i++) {
                        o[oo + i] = (float) Math.cos(xv[ox + i]);
                    }
                }
            }
        });
    }

    @Override
    public void affine(Tensor out, Tensor x, float alpha, float beta) {
        sameNumel(out, "out", x, "x");
        float[] o = f32(out, "out");
        float[] xv = f32(x, "x");
        int oo = out.offset();
        int ox = x.offset();
        pool.parallelFor(x.numel(), GRAIN, (lo, hi) -> {
            for (int i = lo; i < hi; i++) {
                o[oo + i] = alpha * xv[ox + i] + beta;
            }
        });
    }

    @Override
    public void binary(BinaryOp op, Tensor out, Tensor a, Tensor b) {
        sameNumel(out, "out", a, "a");
        int n = a.numel();
        int period = binaryPeriod(op, a, b);
        float[] o = f32(out, "out");
        float[] av = f32(a, "a");
        float[] bv = f32(b, "b");
        int oo = out.offset();
        int oa = a.offset();
        int ob = b.offset();
        if (period == n) {
            pool.parallelFor(n, GRAIN, (lo, hi) -> binaryRun(op, o, oo + lo, av, oa + lo, bv, ob + lo, hi - lo));
        } else {
            pool.parallelFor(a.rows(), rowGrain(period), (lo, hi) -> {
                for (int r = lo; r < hi; r++) {
                    binaryRun(op, o, oo + r * period, av, oa + r * period, bv, ob, period);
                }
            });
        }
    }

    private static void binaryRun(BinaryOp op, float[] o, int oo, float[] a, int oa, float[] b, int ob, int len) {
        // One loop per operator: the JIT compiles a vector operation to SIMD only when the operator
        // is a constant; lanewise(op) with a variable op runs lane by lane, an order of magnitude slower.
        int i = 0;
        int n = len - VecMath.LANES;
        switch (op) {
            case ADD -> {
                for (; i <= n; i += VecMath.LANES) {
                    load(a, oa + i).add(load(b, ob + i)).intoArray(o, oo + i);
                }
            }
            case SUB -> {
                for (; i <= n; i += VecMath.LANES) {
                    load(a, oa + i).sub(load(b, ob + i)).intoArray(o, oo + i);
                }
            }
            case MUL -> {
                for (; i <= n; i += VecMath.LANES) {
                    load(a, oa + i).mul(load(b, ob + i)).intoArray(o, oo + i);
                }
            }
            case DIV -> {
                for (; i <= n; i += VecMath.LANES) {
                    load(a, oa + i).div(load(b, ob + i)).intoArray(o, oo + i);
                }
            }
            case MAX -> {
                for (; i <= n; i += VecMath.LANES) {
                    load(a, oa + i).max(load(b, ob + i)).intoArray(o, oo + i);
                }
            }
            case MIN -> {
                for (; i <= n; i += VecMath.LANES) {
                    load(a, oa + i).min(load(b, ob + i)).intoArray(o, oo + i);
                }
            }
        }
        for (; i < len; i++) {
            o[oo + i] = (float) op.apply(a[oa + i], b[ob + i]);
        }
    }

    private static FloatVector load(float[] a, int off) {
        return FloatVector.fromArray(VecMath.F, a, off);
    }

    // ---- reductions ----

    private int rowGrain(int cols) {
        return Math.max(1, GRAIN / Math.max(1, cols));
    }

    @Override
    public void reduceRows(ReduceOp op, Tensor out, Tensor x) {
        int rows = x.rows();
        int cols = x.cols();
        numel(out, "reduceRows out", rows);
        if (cols == 0 && op != ReduceOp.SUM) {
            throw new IllegalArgumentException("reduceRows " + op + " over an empty last dimension of " + x);
        }
        float[] o = f32(out, "out");
        float[] xv = f32(x, "x");
        int oo = out.offset();
        int ox = x.offset();
        pool.parallelFor(rows, rowGrain(cols), (lo, hi) -> {
            for (int r = lo; r < hi; r++) {
                int base = ox + r * cols;
                if (op == ReduceOp.MAX || op == ReduceOp.LOG_SUM_EXP) {
                    float m = Float.NEGATIVE_INFINITY;
                    for (int c = 0; c < cols; c++) {
                        m = Math.max(m, xv[base + c]);
                    }
                    // An infinite maximum is the log-sum-exp itself (and a row of −∞ gives −∞).
                    if (op == ReduceOp.MAX || Float.isInfinite(m)) {
                        o[oo + r] = m;
                        continue;
                    }
                    double s = 0;
                    for (int c = 0; c < cols; c++) {
                        s += Math.exp((double) xv[base + c] - m);
                    }
                    o[oo + r] = (float) (m + Math.log(s));
                } else {
                    double s = 0;
                    for (int c = 0; c < cols; c++) {
                        s += xv[base + c];
                    }
                    o[oo + r] = (float) (op == ReduceOp.MEAN ? s / cols : s);
                }
            }
        });
    }

    @Override
    public void addColumnSums(Tensor out, Tensor x) {
        int rows = x.rows();
        int cols = x.cols();
        numel(out, "addColumnSums out", cols);
        float[] o = f32(out, "out");
        float[] xv = f32(x, "x");
        int oo = out.offset();
        int ox = x.offset();
        float[] ones = new float[Math.max(1, rows)];
        java.util.Arrays.fill(ones, 1f);
        // out[1, C] += ones[1, N]·x[N, C], each thread a range of columns.
        pool.parallelFor(cols, 64, (lo, hi) -> Blas.sgemm(false, false, 1, hi - lo, rows, 1f, ones, 0, Math.max(1, rows),
                xv, ox + lo, cols, 1f, o, oo + lo, cols));
    }

    @Override
    public double sumOfSquares(Tensor x) {
        return blockSum(x, true);
    }

    @Override
    public void addSum(Tensor out, Tensor x, float scale) {
        KernelChecks.scalarOut(out, "addSum out");
        f32(out, "out")[out.offset()] += (float) (scale * blockSum(x, false));
    }

    @Override
    public void addSumOfSquares(Tensor out, Tensor x, float scale) {
        KernelChecks.scalarOut(out, "addSumOfSquares out");
        f32(out, "out")[out.offset()] += (float) (scale * blockSum(x, true));
    }

    /** Σ x (or Σ x²) in double: fixed blocks summed in parallel, then in block order, so any thread count gives the same bits. */
    private double blockSum(Tensor x, boolean squares) {
        float[] xv = f32(x, "x");
        int ox = x.offset();
        int n = x.numel();
        int blocks = (n + SUM_BLOCK - 1) / SUM_BLOCK;
        double[] partial = new double[blocks];
        pool.parallelFor(blocks, Math.max(1, GRAIN / SUM_BLOCK), (lo, hi) -> {
            for (int blk = lo; blk < hi; blk++) {
                int end = Math.min(n, (blk + 1) * SUM_BLOCK);
                partial[blk] = squares ? VecMath.sumOfSquares(xv, ox + blk * SUM_BLOCK, end - blk * SUM_BLOCK)
                        : VecMath.sumDouble(xv, ox + blk * SUM_BLOCK, end - blk * SUM_BLOCK);
            }
        });
        double total = 0;
        for (double p : partial) {
            total += p;
        }
        return total;
    }

    // ---- softmax ----

    @Override
    public void softmaxForward(Tensor y, Tensor x) {
        sameRows(y, "softmax y", x);
        int rows = x.rows();
        int cols = x.cols();
        float[] yv = f32(y, "y");
        float[] xv = f32(x, "x");
        int oy = y.offset();
        int ox = x.offset();
        pool.parallelFor(rows, rowGrain(cols), (lo, hi) -> {
            for (int r = lo; r < hi; r++) {
                int xb = ox + r * cols;
                int yb = oy + r * cols;
                float max = Float.NEGATIVE_INFINITY;
                for (int c = 0; c < cols; c++) {
                    max = Math.max(max, xv[xb + c]);
                }
                if (max == Float.NEGATIVE_INFINITY) {
                    java.util.Arrays.fill(yv, yb, yb + cols, 0f); // a fully masked row attends nothing
                    continue;
                }
                double sum = 0;
                for (int c = 0; c < cols; c++) {
                    float e = (float) Math.exp(xv[xb + c] - max);
                    yv[yb + c] = e;
                    sum += e;
                }
                float inv = (float) (1.0 / sum);
                for (int c = 0; c < cols; c++) {
                    yv[yb + c] *= inv;
                }
            }
        });
    }

    @Override
    public void softmaxBackward(Tensor dx, Tensor dy, Tensor y) {
        sameRows(dx, "softmax dx", y);
        sameRows(dy, "softmax dy", y);
        int rows = y.rows();
        int cols = y.cols();
        float[] dxv = f32(dx, "dx");
        float[] dyv = f32(dy, "dy");
        float[] yv = f32(y, "y");
        int odx = dx.offset();
        int ody = dy.offset();
        int oy = y.offset();
        pool.parallelFor(rows, rowGrain(cols), (lo, hi) -> {
            for (int r = lo; r < hi; r++) {
                int b = r * cols;
                double dot = 0;
                for (int c = 0; c < cols; c++) {
                    dot += (double) dyv[ody + b + c] * yv[oy + b + c];
                }
                float d = (float) dot;
                for (int c = 0; c < cols; c++) {
                    dxv[odx + b + c] += yv[oy + b + c] * (dyv[ody + b + c] - d);
                }
            }
        });
    }

    // ---- normalization ----

    @Override
    public void layerNormForward(Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor weight, Tensor bias,
                                 float eps) {
        layerNormRows(out, mean, rstd, x, null, null, weight, bias, eps);
    }

    @Override
    public void addLayerNormForward(Tensor sum, Tensor out, Tensor mean, Tensor rstd, Tensor a, Tensor b, Tensor weight,
                                    Tensor bias, float eps) {
        sameNumel(a, "a", sum, "sum");
        sameNumel(b, "b", sum, "sum");
        layerNormRows(out, mean, rstd, sum, a, b, weight, bias, eps);
    }

    /** LayerNorm of x's rows; with a and b, each row of x is first written as a + b, while it is in cache. */
    private void layerNormRows(Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor a, Tensor b, Tensor weight,
                               Tensor bias, float eps) {
        int rows = x.rows();
        int cols = x.cols();
        KernelChecks.checkLayerNormForward(out, mean, rstd, x, weight, bias);
        float[] o = f32(out, "out");
        float[] mv = f32(mean, "mean");
        float[] rv = f32(rstd, "rstd");
        float[] xv = f32(x, "x");
        float[] w = f32(weight, "weight");
        float[] bv = f32(bias, "bias");
        float[] av = a == null ? null : f32(a, "a");
        float[] sv = b == null ? null : f32(b, "b");
        int oa = a == null ? 0 : a.offset();
        int ob = b == null ? 0 : b.offset();
        int oo = out.offset();
        int om = mean.offset();
        int or = rstd.offset();
        int ox = x.offset();
        int ow = weight.offset();
        int obias = bias.offset();
        pool.parallelFor(rows, rowGrain(cols), (lo, hi) -> {
            for (int r = lo; r < hi; r++) {
                int xb = ox + r * cols;
                if (av != null) {
                    binaryRun(BinaryOp.ADD, xv, xb, av, oa + r * cols, sv, ob + r * cols, cols);
                }
                float mu = VecMath.sum(xv, xb, cols) / cols;
                float rs = (float) (1.0 / Math.sqrt(VecMath.sumSquaredDeviations(xv, xb, cols, mu) / cols + eps));
                VecMath.normalize(o, oo + r * cols, xv, xb, cols, mu, rs, w, ow, bv, obias);
                mv[om + r] = mu;
                rv[or + r] = rs;
            }
        });
    }

    @Override
    public void layerNormBackward(Tensor dx, Tensor dweight, Tensor dbias, Tensor dy, Tensor x, Tensor weight,
                                  Tensor mean, Tensor rstd) {
        layerNormBackwardRows(dx, dweight, dbias, dy, null, x, weight, mean, rstd);
    }

    @Override
    public void layerNormBackwardAdd(Tensor dx, Tensor dweight, Tensor dbias, Tensor dy, Tensor dres, Tensor x,
                                     Tensor weight, Tensor mean, Tensor rstd) {
        sameNumel(dres, "dres", dx, "dx");
        layerNormBackwardRows(dx, dweight, dbias, dy, dres, x, weight, mean, rstd);
    }

    /** LayerNorm backward; with dres, each row of dx also gets dres's row added while it is in cache. */
    private void layerNormBackwardRows(Tensor dx, Tensor dweight, Tensor dbias, Tensor dy, Tensor dres, Tensor x,
                                       Tensor weight, Tensor mean, Tensor rstd) {
        int rows = x.rows();
        int cols = x.cols();
        KernelChecks.checkLayerNormBackward(dx, dweight, dbias, dy, x, weight, mean, rstd);
        float[] dxv = f32(dx, "dx");
        float[] dw = f32(dweight, "dweight");
        float[] db = f32(dbias, "dbias");
        float[] dyv = f32(dy, "dy");
        float[] xv = f32(x, "x");
        float[] w = f32(weight, "weight");
        float[] mv = f32(mean, "mean");
        float[] rv = f32(rstd, "rstd");
        float[] drv = dres == null ? null : f32(dres, "dres");
        int odr = dres == null ? 0 : dres.offset();
        int odx = dx.offset();
        int ody = dy.offset();
        int ox = x.offset();
        int ow = weight.offset();
        int om = mean.offset();
        int or = rstd.offset();
        pool.parallelFor(rows, rowGrain(cols), (lo, hi) -> {
            for (int r = lo; r < hi; r++) {
                VecMath.layerNormRowBackward(dxv, odx + r * cols, dyv, ody + r * cols, xv, ox + r * cols, w, ow, cols, mv[om + r],
                        rv[or + r]);
                if (drv != null) {
                    VecMath.addTo(dxv, odx + r * cols, drv, odr + r * cols, cols);
                }
            }
        });
        int odw = dweight.offset();
        int odb = dbias.offset();
        pool.parallelFor(cols, 64, (lo, hi) -> {
            float[] sw = new float[hi - lo];
            float[] sb = new float[hi - lo];
            for (int r = 0; r < rows; r++) {
                VecMath.accumulateAffineGrads(sw, sb, dyv, ody + r * cols + lo, xv, ox + r * cols + lo, hi - lo, mv[om + r], rv[or + r]);
            }
            VecMath.addTo(dw, odw + lo, sw, 0, hi - lo);
            VecMath.addTo(db, odb + lo, sb, 0, hi - lo);
        });
    }

    @Override
    public void rmsNormForward(Tensor out, Tensor rstd, Tensor x, Tensor weight, float eps) {
        int rows = x.rows();
        int cols = x.cols();
        KernelChecks.checkRmsNormForward(out, rstd, x, weight);
        float[] o = f32(out, "out");
        float[] rv = f32(rstd, "rstd");
        float[] xv = f32(x, "x");
        float[] w = f32(weight, "weight");
        int oo = out.offset();
        int or = rstd.offset();
        int ox = x.offset();
        int ow = weight.offset();
        pool.parallelFor(rows, rowGrain(cols), (lo, hi) -> {
            for (int r = lo; r < hi; r++) {
                int xb = ox + r * cols;
                double ss = 0;
                for (int c = 0; c < cols; c++) {
                    double v = xv[xb + c];
                    ss += v * v;
                }
                float rs = (float) (1.0 / Math.sqrt(ss / cols + eps));
                int ob = oo + r * cols;
                for (int c = 0; c < cols; c++) {
                    o[ob + c] = xv[xb + c] * rs * w[ow + c];
                }
                rv[or + r] = rs;
            }
        });
    }

    @Override
    public void rmsNormBackward(Tensor dx, Tensor dweight, Tensor dy, Tensor x, Tensor weight, Tensor rstd) {
        int rows = x.rows();
        int cols = x.cols();
        KernelChecks.checkRmsNormBackward(dx, dweight, dy, x, weight, rstd);
        float[] dxv = f32(dx, "dx");
        float[] dw = f32(dweight, "dweight");
        float[] dyv = f32(dy, "dy");
        float[] xv = f32(x, "x");
        float[] w = f32(weight, "weight");
        float[] rv = f32(rstd, "rstd");
        int odx = dx.offset();
        int ody = dy.offset();
        int ox = x.offset();
        int ow = weight.offset();
        int or = rstd.offset();
        pool.parallelFor(rows, rowGrain(cols), (lo, hi) -> {
            for (int r = lo; r < hi; r++) {
                int b = r * cols;
                float rs = rv[or + r];
                double s = 0;
                for (int c = 0; c < cols; c++) {
                    s += (double) w[ow + c] * dyv[ody + b + c] * xv[ox + b + c] * rs;
                }
                float meanDnX = (float) (s / cols);
                for (int c = 0; c < cols; c++) {
                    float xhat = xv[ox + b + c] * rs;
                    dxv[odx + b + c] += (w[ow + c] * dyv[ody + b + c] - xhat * meanDnX) * rs;
                }
            }
        });
        int odw = dweight.offset();
        pool.parallelFor(cols, 16, (lo, hi) -> {
            double[] sw = new double[hi - lo];
            for (int r = 0; r < rows; r++) {
                int b = r * cols;
                float rs = rv[or + r];
                for (int c = lo; c < hi; c++) {
                    sw[c - lo] += (double) dyv[ody + b + c] * (xv[ox + b + c] * rs);
                }
            }
            for (int c = lo; c < hi; c++) {
                dw[odw + c] += (float) sw[c - lo];
            }
        });
    }

    // ---- activations ----

    @Override
    public void geluForward(Tensor out, Tensor x) {
        sameNumel(out, "out", x, "x");
        float[] o = f32(out, "out");
        float[] xv = f32(x, "x");
        int oo = out.offset();
        int ox = x.offset();
        pool.parallelFor(x.numel(), GRAIN, (lo, hi) -> VecMath.gelu(o, oo + lo, xv, ox + lo, hi - lo));
    }

    @Override
    public void geluBackward(Tensor dx, Tensor dy, Tensor x) {
        sameNumel(dx, "dx", x, "x");
        sameNumel(dy, "dy", x, "x");
        float[] dxv = f32(dx, "dx");
        float[] dyv = f32(dy, "dy");
        float[] xv = f32(x, "x");
        int odx = dx.offset();
        int ody = dy.offset();
        int ox = x.offset();
        pool.parallelFor(x.numel(), GRAIN, (lo, hi) -> VecMath.geluBackward(dxv, odx + lo, dyv, ody + lo, xv, ox + lo, hi - lo));
    }

    @Override
    public void biasGeluForward(Tensor out, Tensor tanhExp, Tensor h, Tensor bias) {
        sameNumel(out, "out", h, "h");
        sameNumel(tanhExp, "tanhExp", h, "h");
        int rows = h.rows();
        int cols = h.cols();
        KernelChecks.numel(bias, "biasGeluForward bias", cols);
        float[] o = f32(out, "out");
        float[] hv = f32(h, "h");
        float[] bv = f32(bias, "bias");
        float[] ev = f32(tanhExp, "tanhExp");
        int oo = out.offset();
        int oe = tanhExp.offset();
        int oh = h.offset();
        int ob = bias.offset();
        pool.parallelFor(rows, rowGrain(cols), (lo, hi) -> {
            for (int r = lo; r < hi; r++) {
                binaryRun(BinaryOp.ADD, hv, oh + r * cols, hv, oh + r * cols, bv, ob, cols);
                VecMath.gelu(o, oo + r * cols, hv, oh + r * cols, cols, ev, oe + r * cols);
            }
        });
    }

    @Override
    public void geluBackwardBias(Tensor dx, Tensor dbias, Tensor dy, Tensor x, Tensor tanhExp) {
        sameNumel(dx, "dx", x, "x");
        sameNumel(dy, "dy", x, "x");
        sameNumel(tanhExp, "tanhExp", x, "x");
        int rows = x.rows();
        int cols = x.cols();
        KernelChecks.numel(dbias, "geluBackwardBias dbias", cols);
        float[] dxv = f32(dx, "dx");
        float[] db = f32(dbias, "dbias");
        float[] dyv = f32(dy, "dy");
        float[] xv = f32(x, "x");
        float[] ev = f32(tanhExp, "tanhExp");
        int oe = tanhExp.offset();
        int odx = dx.offset();
        int odb = dbias.offset();
        int ody = dy.offset();
        int ox = x.offset();
        // Each thread a range of columns, summing its rows in order, so the bias gradient's bits do
        // not depend on the thread count; each row segment is summed while it is in cache.
        pool.parallelFor(cols, 64, (lo, hi) -> {
            int len = hi - lo;
            float[] sums = new float[len];
            for (int r = 0; r < rows; r++) {
                int at = r * cols + lo;
                Arrays.fill(dxv, odx + at, odx + at + len, 0f);
                VecMath.geluBackward(dxv, odx + at, dyv, ody + at, xv, ox + at, len, ev, oe + at);
                VecMath.addTo(sums, 0, dxv, odx + at, len);
            }
            VecMath.addTo(db, odb + lo, sums, 0, len);
        });
    }

    // ---- dropout ----

    @Override
    public void dropoutForward(Tensor out, Tensor x, float p, long seed) {
        checkDropout(p);
        sameNumel(out, "out", x, "x");
        float[] o = f32(out, "out");
        float[] xv = f32(x, "x");
        int oo = out.offset();
        int ox = x.offset();
        float scale = 1f / (1f - p);
        pool.parallelFor(x.numel(), GRAIN, (lo, hi) -> {
            for (int i = lo; i < hi; i++) {
                o[oo + i] = DropoutMask.keeps(seed, i, p) ? xv[ox + i] * scale : 0f;
            }
        });
    }

    @Override
    public void biasDropoutAddForward(Tensor out, Tensor x, Tensor bias, Tensor residual, float p, long seed) {
        checkDropout(p);
        sameNumel(out, "out", x, "x");
        sameNumel(residual, "residual", x, "x");
        int rows = x.rows();
        int cols = x.cols();
        KernelChecks.numel(bias, "biasDropoutAddForward bias", cols);
        float[] o = f32(out, "out");
        float[] xv = f32(x, "x");
        float[] bv = f32(bias, "bias");
        float[] rv = f32(residual, "residual");
        int oo = out.offset();
        int ox = x.offset();
        int ob = bias.offset();
        int or = residual.offset();
        float scale = 1f / (1f - p);
        pool.parallelFor(rows, rowGrain(cols), (lo, hi) -> {
            for (int r = lo; r < hi; r++) {
                int base = r * cols;
                if (p == 0) {
                    binaryRun(BinaryOp.ADD, o, oo + base, xv, ox + base, bv, ob, cols);
                    binaryRun(BinaryOp.ADD, o, oo + base, o, oo + base, rv, or + base, cols);
                    continue;
                }
                for (int c = 0; c < cols; c++) {
                    int i = base + c;
                    float v = xv[ox + i] + bv[ob + c];
                    o[oo + i] = (DropoutMask.keeps(seed, i, p) ? v * scale : 0f) + rv[or + i];
                }
            }
        });
    }

    @Override
    public void dropoutBackward(Tensor dx, Tensor dy, float p, long seed) {
        checkDropout(p);
        sameNumel(dx, "dx", dy, "dy");
        float[] d = f32(dx, "dx");
        float[] g = f32(dy, "dy");
        int od = dx.offset();
        int og = dy.offset();
        float scale = 1f / (1f - p);
        pool.parallelFor(dy.numel(), GRAIN, (lo, hi) -> {
            for (int i = lo; i < hi; i++) {
                if (DropoutMask.keeps(seed, i, p)) {
                    d[od + i] += g[og + i] * scale;
                }
            }
        });
    }

    // ---- embeddings ----

    @Override
    public void embeddingForward(Tensor out, Tensor ids, Tensor table) {
        int n = ids.numel();
        int cols = table.cols();
        int vocab = table.rows();
        numel(out, "embedding out", n * cols);
        float[] o = f32(out, "out");
        int[] idv = i32(ids, "ids");
        float[] tv = f32(table, "table");
        int oo = out.offset();
        int oi = ids.offset();
        int ot = table.offset();
        checkIds(idv, oi, n, vocab, "embedding ids");
        pool.parallelFor(n, rowGrain(cols), (lo, hi) -> {
            for (int r = lo; r < hi; r++) {
                System.arraycopy(tv, ot + idv[oi + r] * cols, o, oo + r * cols, cols);
            }
        });
    }

    @Override
    public void embeddingBackward(Tensor dtable, Tensor dout, Tensor ids) {
        int n = ids.numel();
        int cols = dtable.cols();
        int vocab = dtable.rows();
        numel(dout, "embedding dout", n * cols);
        float[] dt = f32(dtable, "dtable");
        float[] dov = f32(dout, "dout");
        int[] idv = i32(ids, "ids");
        int odt = dtable.offset();
        int odo = dout.offset();
        int oi = ids.offset();
        checkIds(idv, oi, n, vocab, "embedding ids");
        // Split channels, not tokens: two tokens with the same id never race and sums keep token order.
        pool.parallelFor(cols, 16, (lo, hi) -> {
            for (int r = 0; r < n; r++) {
                int src = odo + r * cols;
                int dst = odt + idv[oi + r] * cols;
                for (int c = lo; c < hi; c++) {
                    dt[dst + c] += dov[src + c];
                }
            }
        });
    }

    // ---- loss ----

    @Override
    public void crossEntropyForward(Tensor losses, Tensor logits, Tensor targets, int ignoreIndex) {
        crossEntropy(losses, null, logits, targets, ignoreIndex, 0f);
    }

    @Override
    public void crossEntropyForwardBackward(Tensor losses, Tensor dlogits, Tensor logits, Tensor targets,
                                            int ignoreIndex, float dlossScale) {
        sameRows(dlogits, "cross-entropy dlogits", logits);
        crossEntropy(losses, dlogits, logits, targets, ignoreIndex, dlossScale);
    }

    private void crossEntropy(Tensor losses, Tensor dlogits, Tensor logits, Tensor targets, int ignoreIndex,
                              float scale) {
        int rows = logits.rows();
        int vocab = logits.cols();
        numel(losses, "cross-entropy losses", rows);
        numel(targets, "cross-entropy targets", rows);
        float[] lv = f32(losses, "losses");
        float[] xv = f32(logits, "logits");
        int[] tv = i32(targets, "targets");
        float[] dv = dlogits == null ? null : f32(dlogits, "dlogits");
        int ol = losses.offset();
        int ox = logits.offset();
        int ot = targets.offset();
        int od = dlogits == null ? 0 : dlogits.offset();
        checkTargets(tv, ot, rows, vocab, ignoreIndex);
        pool.parallelFor(rows, rowGrain(vocab), (lo, hi) -> {
            float[] scratch = dv == null ? new float[vocab] : null;
            for (int r = lo; r < hi; r++) {
                int xb = ox + r * vocab;
                int target = tv[ot + r];
                if (target == ignoreIndex) {
                    lv[ol + r] = 0f;
                    if (dv != null) {
                        java.util.Arrays.fill(dv, od + r * vocab, od + (r + 1) * vocab, 0f);
                    }
                    continue;
                }
                float logTarget = xv[xb + target];
                float max = VecMath.max(xv, xb, vocab);
                // Exponentials go to the dlogits row (or scratch), which may be the logits row itself.
                float[] e = dv != null ? dv : scratch;
                int eo = dv != null ? od + r * vocab : 0;
                if (e != xv || eo != xb) {
                    System.arraycopy(xv, xb, e, eo, vocab);
                }
                float sum = VecMath.expShiftSum(e, eo, vocab, max);
                lv[ol + r] = (float) (Math.log(sum) + max - logTarget);
                if (dv != null) {
                    VecMath.scale(dv, eo, vocab, scale / sum);
                    dv[eo + target] -= scale;
                }
            }
        });
    }

    // ---- optimizer ----

    @Override
    public void adamW(Tensor params, Tensor grads, Tensor m, Tensor v, AdamW s) {
        sameNumel(grads, "grads", params, "params");
        sameNumel(m, "m", params, "params");
        sameNumel(v, "v", params, "params");
        float[] p = f32(params, "params");
        float[] g = f32(grads, "grads");
        float[] mv = f32(m, "m");
        float[] vv = f32(v, "v");
        int op = params.offset();
        int og = grads.offset();
        int om = m.offset();
        int ov = v.offset();
        float b1 = s.beta1();
        float b2 = s.beta2();
        float decay = s.decay();
        float stepSize = s.stepSize();
        float bc2Sqrt = s.bc2Sqrt();
        float eps = s.eps();
        float gs = s.gradScale();
        pool.parallelFor(params.numel(), GRAIN, (lo, hi) -> VecMath.adamW(p, op + lo, g, og + lo, mv, om + lo, vv, ov + lo,
                hi - lo, b1, b2, decay, stepSize, bc2Sqrt, eps, gs));
    }

    // ---- attention ----

    @Override
    public void attentionForward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, Varlen cuSeqlensQ,
                                 Varlen cuSeqlensK, Attention attn) {
        attention.forward(out, lse, q, k, v, cuSeqlensQ, cuSeqlensK, attn);
    }

    @Override
    public void attentionBackward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v,
                                  Tensor out, Tensor lse, Varlen cuSeqlensQ, Varlen cuSeqlensK, Attention attn) {
        attention.backward(dq, dk, dv, dout, q, k, v, out, lse, cuSeqlensQ, cuSeqlensK, attn);
    }

    // ---- sketched attention (Skeinformer) ----

    /** Bidirectional: {@link CpuSkein}'s float GEMMs; the causal variant keeps the interface's host loops. */
    @Override
    public void skeinForward(Tensor out, Tensor q, Tensor k, Tensor v, Varlen cuSeqlens, Skein s, long seed) {
        if (s.causal()) {
            Backend.super.skeinForward(out, q, k, v, cuSeqlens, s, seed);
        } else {
            skein.forward(out, q, k, v, cuSeqlens, s, seed);
        }
    }

    @Override
    public void skeinBackward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v,
                              Varlen cuSeqlens, Skein s, long seed) {
        if (s.causal()) {
            Backend.super.skeinBackward(dq, dk, dv, dout, q, k, v, cuSeqlens, s, seed);
        } else {
            skein.backward(dq, dk, dv, dout, q, k, v, cuSeqlens, s, seed);
        }
    }

    // ---- linear attention ----

    @Override
    public void linearAttentionForward(Tensor out, Tensor q, Tensor k, Tensor v, Varlen cuSeqlens, int heads, float eps) {
        linearAttention.forward(out, q, k, v, cuSeqlens, heads, eps);
    }

    @Override
    public void linearAttentionBackward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v,
                                        Varlen cuSeqlens, int heads, float eps) {
        linearAttention.backward(dq, dk, dv, dout, q, k, v, cuSeqlens, heads, eps);
    }

    @Override
    public void linearAttentionStep(Tensor out, Tensor state, Tensor norm, Tensor q, Tensor k, Tensor v, int heads,
                                    float eps) {
        linearAttention.step(out, state, norm, q, k, v, heads, eps);
    }

    // ---- causal long convolution (S4D, H3) ----

    @Override
    public void causalConvForward(Tensor y, Tensor u, Tensor k, Varlen cuSeqlens) {
        causalConv.forward(y, u, k, cuSeqlens);
    }

    @Override
    public void causalConvBackward(Tensor du, Tensor dk, Tensor dy, Tensor u, Tensor k, Varlen cuSeqlens) {
        causalConv.backward(du, dk, dy, u, k, cuSeqlens);
    }

    // ---- diagonal state-space convolution (S4D, H3's diagonal SSM) ----

    @Override
    public void ssmConvForward(Tensor y, Tensor u, Tensor logDt, Tensor aRe, Tensor aIm, Tensor c, Varlen cuSeqlens,
                               int block) {
        ssmConv.forward(y, u, logDt, aRe, aIm, c, cuSeqlens, block);
    }

    @Override
    public void ssmConvBackward(Tensor du, Tensor dlogDt, Tensor daRe, Tensor daIm, Tensor dc, Tensor dy, Tensor u,
                                Tensor logDt, Tensor aRe, Tensor aIm, Tensor c, Varlen cuSeqlens, int block) {
        ssmConv.backward(du, dlogDt, daRe, daIm, dc, dy, u, logDt, aRe, aIm, c, cuSeqlens, block);
    }

    @Override
    public void ssmStep(Tensor y, Tensor state, Tensor u, Tensor logDt, Tensor aRe, Tensor aIm, Tensor c) {
        ssmConv.step(y, state, u, logDt, aRe, aIm, c);
    }

    // ---- feature maps: unary backward, FAVOR+ ----

    @Override
    public void unaryBackward(UnaryOp op, Tensor dx, Tensor dy, Tensor x) {
        sameNumel(dx, "unary backward dx", x, "x");
        sameNumel(dy, "unary backward dy", x, "x");
        float[] dxv = f32(dx, "dx");
        float[] dyv = f32(dy, "dy");
        float[] xv = f32(x, "x");
        int odx = dx.offset();
        int ody = dy.offset();
        int ox = x.offset();
        pool.parallelFor(x.numel(), GRAIN, (lo, hi) -> {
            for (int i = lo; i < hi; i++) {
                dxv[odx + i] += dyv[ody + i] * derivative(op, xv[ox + i]);
            }
        });
    }

    /** f′(v) in fp32 (transcendentals in double, as {@link #unary} computes them); {@link UnaryOp#derivative}'s conventions. */
    private static float derivative(UnaryOp op, float v) {
        return switch (op) {
            case COPY -> 1f;
            case NEG -> -1f;
            case ABS -> v > 0f ? 1f : v < 0f ? -1f : 0f;
            case SQUARE -> 2f * v;
            case SQRT -> 0.5f / (float) Math.sqrt(v);
            case RECIPROCAL -> {
                float r = 1f / v;
                yield -r * r;
            }
            case EXP -> (float) Math.exp(v);
            case LOG -> 1f / v;
            case TANH -> {
                float t = (float) Math.tanh(v);
                yield 1f - t * t;
            }
            case SIGMOID -> {
                float sg = (float) (1.0 / (1.0 + Math.exp(-v)));
                yield sg * (1f - sg);
            }
            case RELU -> v > 0f ? 1f : 0f;
            case ELU_PLUS_ONE -> v > 0f ? 1f : (float) Math.exp(v);
            case COS -> (float) -Math.sin(v);
        };
    }

    /** Row-heads per parallel chunk of the elementwise passes: each touches M features. */
    private static int favorGrain(FavorFeatures f) {
        return Math.max(1, GRAIN / Math.max(1, f.features()));
    }

    /** The first feature with the largest value in row-head r of φ or of the logits [R, M] (exp is monotone). */
    private static int favorArgmax(float[] v, int off, int m) {
        int best = 0;
        for (int i = 1; i < m; i++) {
            if (v[off + i] > v[off + best]) {
                best = i;
            }
        }
        return best;
    }

    /**
     * The logits w_i·x of every row-head come from one GEMM ([T·NH, D]·[M, D]ᵀ, written into out),
     * then each row-head is exponentiated in place with its shift |x|²/2 (+ the largest logit for
     * queries) accumulated in double.
     */
    @Override
    public void favorFeatures(Tensor out, Tensor x, Tensor w, int heads, boolean query) {
        FavorFeatures f = FavorFeatures.check(out, x, w, heads);
        int rows = f.tokens() * f.heads();
        int d = f.headDim();
        int m = f.features();
        if (rows == 0) {
            return;
        }
        gemm(Gemm.of(false, true, rows, m, d), out.view(0, rows, m), x.view(0, rows, d), w);
        float[] o = f32(out, "out");
        float[] xv = f32(x, "x");
        float scale = (float) (1 / Math.sqrt(m));
        pool.parallelFor(rows, favorGrain(f), (lo, hi) -> {
            for (int r = lo; r < hi; r++) {
                int ox = x.offset() + r * d;
                int oo = out.offset() + r * m;
                double norm = 0;
                for (int j = 0; j < d; j++) {
                    norm += (double) xv[ox + j] * xv[ox + j];
                }
                double shift = norm / 2 + (query ? o[oo + favorArgmax(o, oo, m)] : 0);
                for (int i = 0; i < m; i++) {
                    o[oo + i] = (float) Math.exp(o[oo + i] - shift) * scale;
                }
            }
        });
    }

    /**
     * dφ_i/dx = φ_i·(w_i − x − w_i*) (w_i* the query's stabilising feature): with g = dout ⊙ φ,
     * dx += g·W − (Σ_i g_i)·(x + w_i*), the first term one GEMM through a [T·NH, M] scratch.
     */
    @Override
    public void favorFeaturesBackward(Tensor dx, Tensor dout, Tensor out, Tensor x, Tensor w, int heads, boolean query) {
        FavorFeatures f = FavorFeatures.checkBackward(dx, dout, out, x, w, heads);
        int rows = f.tokens() * f.heads();
        int d = f.headDim();
        int m = f.features();
        if (rows == 0) {
            return;
        }
        float[] dxv = f32(dx, "dx");
        float[] gv = f32(dout, "dout");
        float[] ov = f32(out, "out");
        float[] xv = f32(x, "x");
        float[] wv = f32(w, "w");
        try (Tensor g = device.scratch(DType.F32, rows, m)) {
            float[] gs = f32(g, "scratch");
            double[] totals = new double[rows];
            pool.parallelFor(rows, favorGrain(f), (lo, hi) -> {
                for (int r = lo; r < hi; r++) {
                    double total = 0;
                    for (int i = 0; i < m; i++) {
                        float gi = gv[dout.offset() + r * m + i] * ov[out.offset() + r * m + i];
                        gs[g.offset() + r * m + i] = gi;
                        total += gi;
                    }
                    totals[r] = total;
                }
            });
            gemm(Gemm.of(false, false, rows, d, m).scaled(1f, 1f), dx.view(0, rows, d), g, w);
            pool.parallelFor(rows, favorGrain(f), (lo, hi) -> {
                for (int r = lo; r < hi; r++) {
                    int ox = x.offset() + r * d;
                    int ws = query ? w.offset() + favorArgmax(ov, out.offset() + r * m, m) * d : -1;
                    for (int j = 0; j < d; j++) {
                        dxv[dx.offset() + r * d + j] -= (float) (totals[r] * (xv[ox + j] + (query ? wv[ws + j] : 0f)));
                    }
                }
            });
        }
    }

    // ---- grouped GEMM (dropless mixture of experts) ----

    /** One plain GEMM per group, in group order: deterministic, each split across the pool as {@link #gemm} splits it. */
    @Override
    public void groupedGemm(Gemm g, Tensor c, Tensor a, Tensor b, Tensor offsets) {
        GroupedGemm gg = GroupedGemm.check(g, c, a, b, offsets);
        for (int e = 0; e < gg.experts(); e++) {
            if (gg.runs(e)) {
                gemm(gg.group(e), gg.c(c, e), gg.a(a, e), gg.b(b, e));
            }
        }
    }

    // ==== mixture-of-experts routing (dropless, MegaBlocks-style; see MoeRouting) ====

    /** Insertion into a k-long descending list per row: O(E·k), and k is 1 or 2 in practice. */
    @Override
    public void topK(Tensor values, Tensor indices, Tensor x, int k) {
        TopK t = TopK.check(values, indices, x, k);
        int e = t.experts();
        float[] xv = f32(x, "x");
        float[] vv = f32(values, "values");
        int[] iv = i32(indices, "indices");
        int ox = x.offset();
        int ov = values.offset();
        int oi = indices.offset();
        pool.parallelFor(t.tokens(), rowGrain(e), (lo, hi) -> {
            for (int r = lo; r < hi; r++) {
                int base = r * k;
                int filled = 0;
                for (int j = 0; j < e; j++) {
                    float s = xv[ox + r * e + j];
                    TopK.checkScore(s, r, j);
                    // Strictly greater moves ahead, so an equal score stays behind the lower index.
                    int p = filled;
                    while (p > 0 && s > vv[ov + base + p - 1]) {
                        p--;
                    }
                    if (p == k) {
                        continue;
                    }
                    int last = Math.min(filled, k - 1);
                    for (int q = last; q > p; q--) {
                        vv[ov + base + q] = vv[ov + base + q - 1];
                        iv[oi + base + q] = iv[oi + base + q - 1];
                    }
                    vv[ov + base + p] = s;
                    iv[oi + base + p] = j;
                    filled = Math.min(filled + 1, k);
                }
            }
        });
    }

    @Override
    public void expertOffsets(Tensor offsets, Tensor indices, int experts) {
        MoeRouting m = MoeRouting.checkOffsets(offsets, indices, experts);
        int[] counts = m.counts(i32(indices, "indices"), indices.offset(), "expertOffsets indices");
        int[] o = i32(offsets, "offsets");
        int oo = offsets.offset();
        o[oo] = 0;
        for (int e = 0; e < experts; e++) {
            o[oo + e + 1] = o[oo + e] + counts[e];
        }
    }

    /** One serial pass with a cursor per expert: O(N), a few microseconds next to the expert GEMMs. */
    @Override
    public void permutation(Tensor order, Tensor indices, Tensor offsets) {
        MoeRouting m = MoeRouting.checkPermutation(order, indices, offsets);
        int[] ids = i32(indices, "indices");
        int oi = indices.offset();
        int[] off = i32(offsets, "offsets");
        m.checkOffsetsMatch(off, offsets.offset(), m.counts(ids, oi, "permutation indices"));
        int[] cursor = Arrays.copyOfRange(off, offsets.offset(), offsets.offset() + m.experts());
        int[] o = i32(order, "order");
        int oo = order.offset();
        for (int i = 0; i < m.entries(); i++) {
            o[oo + cursor[ids[oi + i]]++] = i;
        }
    }

    @Override
    public void gatherRows(Tensor out, Tensor x, Tensor rows) {
        RowMap m = RowMap.checkGather(out, x, rows);
        int c = m.channels();
        int[] rv = i32(rows, "rows");
        int or = rows.offset();
        m.checkRows(rv, or, "gatherRows rows");
        float[] o = f32(out, "out");
        float[] xv = f32(x, "x");
        int oo = out.offset();
        int ox = x.offset();
        pool.parallelFor(m.mappedRows(), rowGrain(c), (lo, hi) -> {
            for (int i = lo; i < hi; i++) {
                if (rv[or + i] == -1) {
                    Arrays.fill(o, oo + i * c, oo + (i + 1) * c, 0f);
                } else {
                    System.arraycopy(xv, ox + rv[or + i] * c, o, oo + i * c, c);
                }
            }
        });
    }

    @Override
    public void scatterAddRows(Tensor out, Tensor x, Tensor rows, Tensor weights) {
        RowMap m = RowMap.checkScatter(out, x, rows, weights);
        int c = m.channels();
        int[] rv = i32(rows, "rows");
        int or = rows.offset();
        m.checkRows(rv, or, "scatterAddRows rows");
        float[] o = f32(out, "out");
        float[] xv = f32(x, "x");
        float[] wv = weights == null ? null : f32(weights, "weights");
        int oo = out.offset();
        int ox = x.offset();
        int ow = weights == null ? 0 : weights.offset();
        // Split channels, as the embedding backward does: no two workers touch one element, and
        // each element sums its rows in increasing i.
        pool.parallelFor(c, Math.max(16, rowGrain(m.mappedRows())), (lo, hi) -> {
            for (int i = 0; i < m.mappedRows(); i++) {
                if (rv[or + i] == -1) {
                    continue;
                }
                int src = ox + i * c;
                int dst = oo + rv[or + i] * c;
                if (wv == null) {
                    for (int j = lo; j < hi; j++) {
                        o[dst + j] += xv[src + j];
                    }
                } else {
                    float w = wv[ow + i];
                    for (int j = lo; j < hi; j++) {
                        o[dst + j] += w * xv[src + j];
                    }
                }
            }
        });
    }

    // ==== mixture-of-experts capacity, gates and router gradients (Switch-style; see MoeRouting) ====

    @Override
    public void entryTokens(Tensor rows, Tensor entries, int k) {
        MoeRouting.checkEntryTokens(rows, entries, k);
        int[] ev = i32(entries, "entries");
        int oe = entries.offset();
        // Checked in full before any write: rows may be entries.
        MoeRouting.checkEntries(ev, oe, entries.numel(), "entryTokens entries");
        int[] rv = i32(rows, "rows");
        int or = rows.offset();
        pool.parallelFor(entries.numel(), GRAIN, (lo, hi) -> {
            for (int i = lo; i < hi; i++) {
                int v = ev[oe + i];
                rv[or + i] = v == -1 ? -1 : v / k;
            }
        });
    }

    /** One serial pass over E·capacity slots: a copy per slot, not worth splitting. */
    @Override
    public void capacitySlots(Tensor slots, Tensor order, Tensor offsets, int capacity) {
        MoeRouting m = MoeRouting.checkCapacity(slots, order, offsets, capacity);
        int[] off = i32(offsets, "offsets");
        int oo = offsets.offset();
        m.checkOffsetsRange(off, oo, "capacitySlots offsets");
        int[] ov = i32(order, "order");
        int[] sv = i32(slots, "slots");
        int os = slots.offset();
        for (int e = 0; e < m.experts(); e++) {
            int start = off[oo + e];
            int kept = Math.min(off[oo + e + 1] - start, capacity);
            System.arraycopy(ov, order.offset() + start, sv, os + e * capacity, kept);
            Arrays.fill(sv, os + e * capacity + kept, os + (e + 1) * capacity, -1);
        }
    }

    @Override
    public void scaleRows(Tensor out, Tensor x, Tensor s) {
        checkScaleRows(out, x, s);
        int c = x.cols();
        float[] o = f32(out, "out");
        float[] xv = f32(x, "x");
        float[] sv = f32(s, "s");
        int oo = out.offset();
        int ox = x.offset();
        int os = s.offset();
        pool.parallelFor(x.rows(), rowGrain(c), (lo, hi) -> {
            for (int r = lo; r < hi; r++) {
                float w = sv[os + r];
                for (int j = 0; j < c; j++) {
                    o[oo + r * c + j] = w * xv[ox + r * c + j];
                }
            }
        });
    }

    @Override
    public void topKBackward(Tensor dx, Tensor dvalues, Tensor indices) {
        TopK t = TopK.checkBackward(dx, dvalues, indices);
        int[] iv = i32(indices, "indices");
        int oi = indices.offset();
        t.checkIds(iv, oi, "topKBackward indices");
        float[] d = f32(dx, "dx");
        float[] g = f32(dvalues, "dvalues");
        int od = dx.offset();
        int og = dvalues.offset();
        int e = t.experts();
        int k = t.k();
        // Each row adds only into its own dx row, in j order.
        pool.parallelFor(t.tokens(), rowGrain(e + k), (lo, hi) -> {
            for (int r = lo; r < hi; r++) {
                for (int j = 0; j < k; j++) {
                    d[od + r * e + iv[oi + r * k + j]] += g[og + r * k + j];
                }
            }
        });
    }

    @Override
    public void uniformNoise(Tensor out, float lo, float hi, long seed) {
        Noise.checkRange(lo, hi);
        float[] o = f32(out, "out");
        int oo = out.offset();
        pool.parallelFor(out.numel(), GRAIN, (a, b) -> {
            for (int i = a; i < b; i++) {
                o[oo + i] = Noise.uniform(seed, i, lo, hi);
            }
        });
    }
}
