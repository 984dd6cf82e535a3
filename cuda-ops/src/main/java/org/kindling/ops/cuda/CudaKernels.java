package org.kindling.ops.cuda;

import static org.kindling.ops.KernelChecks.binaryPeriod;
import static org.kindling.ops.KernelChecks.checkDropout;
import static org.kindling.ops.KernelChecks.checkIds;
import static org.kindling.ops.KernelChecks.checkScaleRows;
import static org.kindling.ops.KernelChecks.checkTargets;
import static org.kindling.ops.KernelChecks.numel;
import static org.kindling.ops.KernelChecks.sameNumel;
import static org.kindling.ops.KernelChecks.sameRows;
import static org.kindling.ops.KernelChecks.scalarOut;
import static org.kindling.ops.cuda.Cuda.check;

import java.nio.ByteBuffer;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import jcuda.Pointer;
import jcuda.driver.CUdeviceptr;
import jcuda.driver.CUfunction;
import jcuda.driver.CUmodule;
import jcuda.driver.JCudaDriver;
import org.kindling.ops.AdamW;
import org.kindling.ops.Attention;
import org.kindling.ops.BF16;
import org.kindling.ops.BinaryOp;
import org.kindling.ops.DType;
import org.kindling.ops.DropoutMask;
import org.kindling.ops.Gemm;
import org.kindling.ops.HostStore;
import org.kindling.ops.KernelChecks;
import org.kindling.ops.MoeRouting;
import org.kindling.ops.Noise;
import org.kindling.ops.ReduceOp;
import org.kindling.ops.RowMap;
import org.kindling.ops.Tensor;
import org.kindling.ops.TopK;
import org.kindling.ops.UnaryOp;
import org.kindling.ops.Varlen;

/**
 * The {@link org.kindling.ops.Backend} operations that have a CUDA kernel (kernels.cu), plus the
 * host copies; {@link org.kindling.ops.HostFallback} runs every other operation on the CPU. Each
 * method here has the signature of the {@code Backend} method it implements, checks its arguments
 * with the same {@link KernelChecks} as the CPU backend, and launches on the device's stream.
 */
final class CudaKernels {
    /** Threads per block; block_sum_f32 relies on it being kernels.cu's SUM_THREADS. */
    private static final int THREADS = 256;
    /** Grid-stride loops cover the rest; more blocks than this only adds scheduling. */
    private static final long MAX_BLOCKS = 1 << 16;
    private static final String[] FUNCTIONS = {"fill_f32", "fill_i32", "fill_bf16", "f32_to_bf16", "bf16_to_f32",
        "affine_f32", "unary_f32", "binary_f32", "reduce_rows_f32", "block_sum_f32",
        "softmax_forward_f32", "softmax_backward_f32", "layer_norm_forward_f32", "layer_norm_backward_dx_f32",
        "layer_norm_backward_dwb_f32", "gelu_forward_f32", "gelu_backward_f32", "dropout_forward_f32",
        "dropout_backward_f32", "embedding_forward_f32", "cross_entropy_f32", "adamw_f32",
        "topk_f32", "topk_backward_f32", "moe_histogram", "moe_offsets_scan", "moe_permutation", "gather_rows_f32",
        "scatter_add_rows_f32", "scale_rows_f32", "entry_tokens", "capacity_slots", "rms_norm_forward_f32",
        "rms_norm_backward_dx_f32", "rms_norm_backward_dw_f32", "unary_backward_f32", "uniform_noise_f32"};

    private final CudaDevice device;
    private final CUmodule module = new CUmodule();
    private final Map<String, CUfunction> functions = new HashMap<>();
    /** One double the sum kernel writes for {@link #sumOfSquares}; guarded by {@code this}. */
    private final CUdeviceptr total;
    private final CudaGemm gemm;
    private final CudaAttention attention;
    private final CudaSsm ssm;

    CudaKernels(CudaDevice device, byte[] fatbin) {
        this.device = device;
        check(JCudaDriver.cuModuleLoadData(module, fatbin), "cuModuleLoadData of " + Cuda.FATBIN);
        for (String name : FUNCTIONS) {
            CUfunction f = new CUfunction();
            check(JCudaDriver.cuModuleGetFunction(f, module, name), "cuModuleGetFunction(" + name + ")");
            functions.put(name, f);
        }
        total = device.allocZeroed(Double.BYTES);
        gemm = new CudaGemm(device, module);
        attention = new CudaAttention(device, module);
        ssm = new CudaSsm(device, module);
    }

    void unload() {
        device.free(total);
        check(JCudaDriver.cuModuleUnload(module), "cuModuleUnload");
    }

    public String name() {
        return "cuda";
    }

    /** GEMM runs on the device: gemm.cu's kernels (see {@link CudaGemm}). */
    public String gemmImpl() {
        return "cuda";
    }

    // ---- arguments ----

    /** The address of {@code t}'s first element. */
    private CUdeviceptr at(Tensor t, DType want, String what) {
        return device.storage(t, want, what).ptr().withByteOffset((long) t.offset() * want.bytes());
    }

    /** The storage base; kernels add the element offset themselves. */
    private CUdeviceptr base(Tensor t, DType want, String what) {
        return device.storage(t, want, what).ptr();
    }

    private void launch(String name, long n, Object... args) {
        launchBlocks(name, (int) Math.min((n + THREADS - 1) / THREADS, MAX_BLOCKS), args);
    }

    private void launchBlocks(String name, int blocks, Object... args) {
        if (blocks == 0) {
            return;
        }
        device.makeCurrent();
        check(JCudaDriver.cuLaunchKernel(functions.get(name), blocks, 1, 1, THREADS, 1, 1, 0, device.stream(),
                Cuda.params(name, args), null), "launch of " + name);
    }

    // ---- host transfers: synchronous, so they wait for the stream's earlier kernels ----

    public void copyFromHost(Tensor dst, float[] src) {
        numel(dst, "dst", src.length);
        if (src.length == 0) {
            return;
        }
        device.makeCurrent();
        if (dst.dtype() == DType.BF16) {
            short[] h = new short[src.length];
            for (int i = 0; i < h.length; i++) {
                h[i] = BF16.fromFloat(src[i]);
            }
            check(JCudaDriver.cuMemcpyHtoD(at(dst, DType.BF16, "dst"), Pointer.to(h), 2L * h.length), "cuMemcpyHtoD");
        } else {
            check(JCudaDriver.cuMemcpyHtoD(at(dst, DType.F32, "dst"), Pointer.to(src), 4L * src.length), "cuMemcpyHtoD");
        }
    }

    public void copyFromHost(Tensor dst, int[] src) {
        numel(dst, "dst", src.length);
        if (src.length == 0) {
            return;
        }
        device.makeCurrent();
        check(JCudaDriver.cuMemcpyHtoD(at(dst, DType.I32, "dst"), Pointer.to(src), 4L * src.length), "cuMemcpyHtoD");
    }

    public void copyToHost(float[] dst, Tensor src) {
        numel(src, "src", dst.length);
        if (dst.length == 0) {
            return;
        }
        device.makeCurrent();
        if (src.dtype() == DType.BF16) {
            short[] h = new short[dst.length];
            check(JCudaDriver.cuMemcpyDtoH(Pointer.to(h), at(src, DType.BF16, "src"), 2L * h.length), "cuMemcpyDtoH");
            for (int i = 0; i < h.length; i++) {
                dst[i] = BF16.toFloat(h[i]);
            }
        } else {
            check(JCudaDriver.cuMemcpyDtoH(Pointer.to(dst), at(src, DType.F32, "src"), 4L * dst.length), "cuMemcpyDtoH");
        }
    }

    public void copyToHost(int[] dst, Tensor src) {
        numel(src, "src", dst.length);
        if (dst.length == 0) {
            return;
        }
        device.makeCurrent();
        check(JCudaDriver.cuMemcpyDtoH(Pointer.to(dst), at(src, DType.I32, "src"), 4L * dst.length), "cuMemcpyDtoH");
    }

    /** A host store whose buffers are page-locked for this GPU (and unlocked when it closes), so copies to it are direct DMA. */
    public HostStore allocateStore(long floats) {
        return HostStore.allocate(floats, new HostStore.Pinning() {
            @Override
            public void pin(ByteBuffer buffer) {
                device.makeCurrent();
                check(JCudaDriver.cuMemHostRegister(Pointer.to(buffer), buffer.capacity(), 0), "cuMemHostRegister");
            }

            @Override
            public void unpin(ByteBuffer buffer) {
                device.makeCurrent();
                check(JCudaDriver.cuMemHostUnregister(Pointer.to(buffer)), "cuMemHostUnregister");
            }
        });
    }

    public void copyToStore(HostStore dst, long offset, Tensor src) {
        if (src.dtype() == DType.BF16) {
            float[] f = new float[src.numel()];
            copyToHost(f, src);
            dst.put(offset, f, 0, f.length);
            return;
        }
        device.makeCurrent();
        CUdeviceptr from = at(src, DType.F32, "src");
        dst.forEachPiece(offset, src.numel(), (buffer, at, index, count) -> check(JCudaDriver.cuMemcpyDtoH(
                Pointer.to(piece(buffer, at, count)), from.withByteOffset(4L * index), 4L * count), "cuMemcpyDtoH"));
    }

    public void copyFromStore(Tensor dst, HostStore src, long offset) {
        if (dst.dtype() == DType.BF16) {
            float[] f = new float[dst.numel()];
            src.get(offset, f, 0, f.length);
            copyFromHost(dst, f);
            return;
        }
        device.makeCurrent();
        CUdeviceptr to = at(dst, DType.F32, "dst");
        src.forEachPiece(offset, dst.numel(), (buffer, at, index, count) -> check(JCudaDriver.cuMemcpyHtoD(
                to.withByteOffset(4L * index), Pointer.to(piece(buffer, at, count)), 4L * count), "cuMemcpyHtoD"));
    }

    /** Floats [at, at + count) of a store's buffer as a buffer of their own, so the pointer starts at them. */
    private static ByteBuffer piece(ByteBuffer buffer, int at, int count) {
        return buffer.duplicate().position(4 * at).limit(4 * (at + count)).slice();
    }

    // ---- data movement ----

    public void fill(Tensor out, float value) {
        switch (out.dtype()) {
            case F32 -> launch("fill_f32", out.numel(), base(out, DType.F32, "out"), out.offset(), out.numel(), value);
            case BF16 -> launch("fill_bf16", out.numel(), base(out, DType.BF16, "out"), out.offset(), out.numel(), value);
            case I32 -> {
                if (value != (int) value) {
                    throw new IllegalArgumentException("cannot fill I32 " + out + " with " + value);
                }
                launch("fill_i32", out.numel(), base(out, DType.I32, "out"), out.offset(), out.numel(), (int) value);
            }
        }
    }

    public void copy(Tensor dst, Tensor src) {
        sameNumel(dst, "dst", src, "src");
        int n = src.numel();
        if (src.dtype() == dst.dtype()) {
            boolean overlap = dst.storage() == src.storage() && dst.offset() < src.offset() + n && src.offset() < dst.offset() + n;
            if (n == 0 || overlap && dst.offset() == src.offset()) {
                return;
            }
            if (overlap) {
                // A device-to-device copy between overlapping ranges is undefined: go through a temporary, as memmove would.
                try (Tensor tmp = device.allocate(src.dtype(), n)) {
                    copyBytes(tmp, src);
                    copyBytes(dst, tmp);
                }
            } else {
                copyBytes(dst, src);
            }
        } else if (src.dtype() == DType.F32 && dst.dtype() == DType.BF16) {
            launch("f32_to_bf16", n, base(dst, DType.BF16, "dst"), dst.offset(), base(src, DType.F32, "src"), src.offset(), n);
        } else if (src.dtype() == DType.BF16 && dst.dtype() == DType.F32) {
            launch("bf16_to_f32", n, base(dst, DType.F32, "dst"), dst.offset(), base(src, DType.BF16, "src"), src.offset(), n);
        } else {
            throw new IllegalArgumentException("cannot copy " + src + " into " + dst + ": only F32 and BF16 convert");
        }
    }

    private void copyBytes(Tensor dst, Tensor src) {
        device.makeCurrent();
        check(JCudaDriver.cuMemcpyDtoDAsync(at(dst, dst.dtype(), "dst"), at(src, src.dtype(), "src"),
                (long) src.numel() * src.dtype().bytes(), device.stream()), "cuMemcpyDtoDAsync");
    }

    // ---- elementwise ----

    public void unary(UnaryOp op, Tensor out, Tensor x) {
        sameNumel(out, "out", x, "x");
        launch("unary_f32", x.numel(), op.ordinal(), base(out, DType.F32, "out"), out.offset(), base(x, DType.F32, "x"),
                x.offset(), x.numel());
    }

    public void affine(Tensor out, Tensor x, float alpha, float beta) {
        sameNumel(out, "out", x, "x");
        launch("affine_f32", x.numel(), base(out, DType.F32, "out"), out.offset(), base(x, DType.F32, "x"), x.offset(),
                x.numel(), alpha, beta);
    }

    public void binary(BinaryOp op, Tensor out, Tensor a, Tensor b) {
        sameNumel(out, "out", a, "a");
        int period = binaryPeriod(op, a, b);
        launch("binary_f32", a.numel(), op.ordinal(), base(out, DType.F32, "out"), out.offset(), base(a, DType.F32, "a"),
                a.offset(), base(b, DType.F32, "b"), b.offset(), a.numel(), Math.max(1, period));
    }

    // ---- reductions ----

    public void reduceRows(ReduceOp op, Tensor out, Tensor x) {
        int rows = x.rows();
        int cols = x.cols();
        numel(out, "reduceRows out", rows);
        if (cols == 0 && op != ReduceOp.SUM) {
            throw new IllegalArgumentException("reduceRows " + op + " over an empty last dimension of " + x);
        }
        launch("reduce_rows_f32", rows, op.ordinal(), base(out, DType.F32, "out"), out.offset(), base(x, DType.F32, "x"),
                x.offset(), rows, cols);
    }

    public synchronized double sumOfSquares(Tensor x) {
        launchBlocks("block_sum_f32", 1, base(x, DType.F32, "x"), x.offset(), x.numel(), 1, new CUdeviceptr(), 0, 1f, total);
        double[] s = new double[1];
        device.makeCurrent();
        check(JCudaDriver.cuMemcpyDtoH(Pointer.to(s), total, Double.BYTES), "cuMemcpyDtoH");
        return s[0];
    }

    public void addSum(Tensor out, Tensor x, float scale) {
        scalarOut(out, "addSum out");
        launchBlocks("block_sum_f32", 1, base(x, DType.F32, "x"), x.offset(), x.numel(), 0, base(out, DType.F32, "out"),
                out.offset(), scale, new CUdeviceptr());
    }

    public void addSumOfSquares(Tensor out, Tensor x, float scale) {
        scalarOut(out, "addSumOfSquares out");
        launchBlocks("block_sum_f32", 1, base(x, DType.F32, "x"), x.offset(), x.numel(), 1, base(out, DType.F32, "out"),
                out.offset(), scale, new CUdeviceptr());
    }

    // ---- matrix products (CudaGemm) ----

    public void gemm(Gemm g, Tensor c, Tensor a, Tensor b) {
        gemm.gemm(g, c, a, b);
    }

    public void gemmBatched(Gemm g, List<Tensor> c, List<Tensor> a, List<Tensor> b) {
        gemm.gemmBatched(g, c, a, b);
    }

    public void groupedGemm(Gemm g, Tensor c, Tensor a, Tensor b, Tensor offsets) {
        gemm.groupedGemm(g, c, a, b, offsets);
    }

    // ---- transformer kernels (nn.cu): F32 only, as on the CPU; one block per row for row-wise ops ----

    /** One block per row (grid-stride beyond MAX_BLOCKS rows). */
    private void launchRows(String name, int rows, Object... args) {
        launchBlocks(name, (int) Math.min(rows, MAX_BLOCKS), args);
    }

    /** The I32 tensor's values on the host, for the CPU's range checks (ids and targets: one int per token). */
    private int[] hostInts(Tensor t, String what) {
        device.storage(t, DType.I32, what);
        int[] h = new int[t.numel()];
        copyToHost(h, t);
        return h;
    }

    public void softmaxForward(Tensor y, Tensor x) {
        sameRows(y, "softmax y", x);
        launchRows("softmax_forward_f32", x.rows(), base(y, DType.F32, "y"), y.offset(), base(x, DType.F32, "x"), x.offset(),
                x.rows(), x.cols());
    }

    public void softmaxBackward(Tensor dx, Tensor dy, Tensor y) {
        sameRows(dx, "softmax dx", y);
        sameRows(dy, "softmax dy", y);
        launchRows("softmax_backward_f32", y.rows(), base(dx, DType.F32, "dx"), dx.offset(), base(dy, DType.F32, "dy"),
                dy.offset(), base(y, DType.F32, "y"), y.offset(), y.rows(), y.cols());
    }

    public void layerNormForward(Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor weight, Tensor bias, float eps) {
        int rows = x.rows();
        int cols = x.cols();
        KernelChecks.checkLayerNormForward(out, mean, rstd, x, weight, bias);
        launchRows("layer_norm_forward_f32", rows, base(out, DType.F32, "out"), out.offset(), base(mean, DType.F32, "mean"),
                mean.offset(), base(rstd, DType.F32, "rstd"), rstd.offset(), base(x, DType.F32, "x"), x.offset(),
                base(weight, DType.F32, "weight"), weight.offset(), base(bias, DType.F32, "bias"), bias.offset(), rows, cols,
                eps);
    }

    public void layerNormBackward(Tensor dx, Tensor dweight, Tensor dbias, Tensor dy, Tensor x, Tensor weight,
                                  Tensor mean, Tensor rstd) {
        int rows = x.rows();
        int cols = x.cols();
        KernelChecks.checkLayerNormBackward(dx, dweight, dbias, dy, x, weight, mean, rstd);
        CUdeviceptr dyp = base(dy, DType.F32, "dy");
        CUdeviceptr xp = base(x, DType.F32, "x");
        CUdeviceptr mp = base(mean, DType.F32, "mean");
        CUdeviceptr rp = base(rstd, DType.F32, "rstd");
        launchRows("layer_norm_backward_dx_f32", rows, base(dx, DType.F32, "dx"), dx.offset(), dyp, dy.offset(), xp,
                x.offset(), base(weight, DType.F32, "weight"), weight.offset(), mp, mean.offset(), rp, rstd.offset(), rows,
                cols);
        launch("layer_norm_backward_dwb_f32", cols, base(dweight, DType.F32, "dweight"), dweight.offset(),
                base(dbias, DType.F32, "dbias"), dbias.offset(), dyp, dy.offset(), xp, x.offset(), mp, mean.offset(), rp,
                rstd.offset(), rows, cols);
    }

    public void geluForward(Tensor out, Tensor x) {
        sameNumel(out, "out", x, "x");
        launch("gelu_forward_f32", x.numel(), base(out, DType.F32, "out"), out.offset(), base(x, DType.F32, "x"), x.offset(),
                x.numel());
    }

    public void geluBackward(Tensor dx, Tensor dy, Tensor x) {
        sameNumel(dx, "dx", x, "x");
        sameNumel(dy, "dy", x, "x");
        launch("gelu_backward_f32", x.numel(), base(dx, DType.F32, "dx"), dx.offset(), base(dy, DType.F32, "dy"),
                dy.offset(), base(x, DType.F32, "x"), x.offset(), x.numel());
    }

    public void dropoutForward(Tensor out, Tensor x, float p, long seed) {
        checkDropout(p);
        sameNumel(out, "out", x, "x");
        launch("dropout_forward_f32", x.numel(), base(out, DType.F32, "out"), out.offset(), base(x, DType.F32, "x"),
                x.offset(), x.numel(), DropoutMask.threshold(p), 1f / (1f - p), seed);
    }

    public void dropoutBackward(Tensor dx, Tensor dy, float p, long seed) {
        checkDropout(p);
        sameNumel(dx, "dx", dy, "dy");
        launch("dropout_backward_f32", dy.numel(), base(dx, DType.F32, "dx"), dx.offset(), base(dy, DType.F32, "dy"),
                dy.offset(), dy.numel(), DropoutMask.threshold(p), 1f / (1f - p), seed);
    }

    public void embeddingForward(Tensor out, Tensor ids, Tensor table) {
        int n = ids.numel();
        int cols = table.cols();
        numel(out, "embedding out", n * cols);
        CUdeviceptr op = base(out, DType.F32, "out");
        CUdeviceptr tp = base(table, DType.F32, "table");
        checkIds(hostInts(ids, "ids"), 0, n, table.rows(), "embedding ids");
        launch("embedding_forward_f32", (long) n * cols, op, out.offset(), base(ids, DType.I32, "ids"), ids.offset(), tp,
                table.offset(), n, cols);
    }

    /**
     * Deterministic without float atomics: the ids, already on the host for the range check, are
     * the destination rows of {@link #scatterRows}, which adds each id's tokens in token order, the
     * CPU's order, so the sums match it.
     */
    public void embeddingBackward(Tensor dtable, Tensor dout, Tensor ids) {
        int n = ids.numel();
        int cols = dtable.cols();
        int vocab = dtable.rows();
        numel(dout, "embedding dout", n * cols);
        CUdeviceptr dtp = base(dtable, DType.F32, "dtable");
        CUdeviceptr dop = base(dout, DType.F32, "dout");
        int[] idv = hostInts(ids, "ids");
        checkIds(idv, 0, n, vocab, "embedding ids");
        scatterRows(dtp, dtable.offset(), dop, dout.offset(), new CUdeviceptr(), 0, idv, vocab, cols);
    }

    public void crossEntropyForward(Tensor losses, Tensor logits, Tensor targets, int ignoreIndex) {
        crossEntropy(losses, null, logits, targets, ignoreIndex, 0f);
    }

    public void crossEntropyForwardBackward(Tensor losses, Tensor dlogits, Tensor logits, Tensor targets, int ignoreIndex,
                                            float dlossScale) {
        sameRows(dlogits, "cross-entropy dlogits", logits);
        crossEntropy(losses, dlogits, logits, targets, ignoreIndex, dlossScale);
    }

    private void crossEntropy(Tensor losses, Tensor dlogits, Tensor logits, Tensor targets, int ignoreIndex, float scale) {
        int rows = logits.rows();
        int vocab = logits.cols();
        numel(losses, "cross-entropy losses", rows);
        numel(targets, "cross-entropy targets", rows);
        CUdeviceptr lp = base(losses, DType.F32, "losses");
        CUdeviceptr xp = base(logits, DType.F32, "logits");
        CUdeviceptr dp = dlogits == null ? new CUdeviceptr() : base(dlogits, DType.F32, "dlogits");
        checkTargets(hostInts(targets, "targets"), 0, rows, vocab, ignoreIndex);
        launchRows("cross_entropy_f32", rows, lp, losses.offset(), dp, dlogits == null ? 0 : dlogits.offset(), xp,
                logits.offset(), base(targets, DType.I32, "targets"), targets.offset(), rows, vocab, ignoreIndex, scale);
    }

    public void adamW(Tensor params, Tensor grads, Tensor m, Tensor v, AdamW s) {
        sameNumel(grads, "grads", params, "params");
        sameNumel(m, "m", params, "params");
        sameNumel(v, "v", params, "params");
        launch("adamw_f32", params.numel(), base(params, DType.F32, "params"), params.offset(), base(grads, DType.F32, "grads"),
                grads.offset(), base(m, DType.F32, "m"), m.offset(), base(v, DType.F32, "v"), v.offset(), params.numel(),
                s.beta1(), 1f - s.beta1(), s.beta2(), 1f - s.beta2(), s.decay(), s.stepSize(), s.bc2Sqrt(), s.eps(),
                s.gradScale());
    }

    // ---- mixture of experts, RMSNorm, unary backward and noise (moe.cu): the CPU's checks, ids checked on the host ----

    /**
     * A NaN score is an error naming its row and column, as on the CPU: topk_f32 leaves NaNs out
     * and records the least NaN position, which the host reads back after the launch.
     */
    public void topK(Tensor values, Tensor indices, Tensor x, int k) {
        TopK t = TopK.check(values, indices, x, k);
        CUdeviceptr vp = base(values, DType.F32, "values");
        CUdeviceptr ip = base(indices, DType.I32, "indices");
        CUdeviceptr xp = base(x, DType.F32, "x");
        try (Tensor nanAt = device.allocate(DType.I32, 1)) {
            launch("fill_i32", 1, base(nanAt, DType.I32, "nanAt"), nanAt.offset(), 1, Integer.MAX_VALUE);
            launch("topk_f32", t.tokens(), vp, values.offset(), ip, indices.offset(), xp, x.offset(), t.tokens(),
                    t.experts(), k, base(nanAt, DType.I32, "nanAt"));
            int at = hostInts(nanAt, "nanAt")[0];
            if (at != Integer.MAX_VALUE) {
                TopK.checkScore(Double.NaN, at / t.experts(), at % t.experts());
            }
        }
    }

    public void topKBackward(Tensor dx, Tensor dvalues, Tensor indices) {
        TopK t = TopK.checkBackward(dx, dvalues, indices);
        CUdeviceptr dxp = base(dx, DType.F32, "dx");
        CUdeviceptr dvp = base(dvalues, DType.F32, "dvalues");
        t.checkIds(hostInts(indices, "indices"), 0, "topKBackward indices");
        launch("topk_backward_f32", t.tokens(), dxp, dx.offset(), dvp, dvalues.offset(), base(indices, DType.I32, "indices"),
                indices.offset(), t.tokens(), t.experts(), t.k());
    }

    /** A histogram by integer atomics (their order cannot change a count), then one thread's prefix sum. */
    public void expertOffsets(Tensor offsets, Tensor indices, int experts) {
        MoeRouting m = MoeRouting.checkOffsets(offsets, indices, experts);
        CUdeviceptr op = base(offsets, DType.I32, "offsets");
        checkIds(hostInts(indices, "indices"), 0, m.entries(), experts, "expertOffsets indices");
        fill(offsets, 0);
        launch("moe_histogram", m.entries(), op, offsets.offset(), base(indices, DType.I32, "indices"), indices.offset(),
                m.entries());
        launchBlocks("moe_offsets_scan", 1, op, offsets.offset(), experts);
    }

    /** One block per expert ranks that expert's entries in index order (see moe.cu): stable. */
    public void permutation(Tensor order, Tensor indices, Tensor offsets) {
        MoeRouting m = MoeRouting.checkPermutation(order, indices, offsets);
        CUdeviceptr op = base(order, DType.I32, "order");
        int[] ids = hostInts(indices, "indices");
        m.checkOffsetsMatch(hostInts(offsets, "offsets"), 0, m.counts(ids, 0, "permutation indices"));
        launchBlocks("moe_permutation", (int) Math.min(m.experts(), MAX_BLOCKS), op, order.offset(),
                base(indices, DType.I32, "indices"), indices.offset(), base(offsets, DType.I32, "offsets"), offsets.offset(),
                m.entries(), m.experts());
    }

    public void gatherRows(Tensor out, Tensor x, Tensor rows) {
        RowMap m = RowMap.checkGather(out, x, rows);
        CUdeviceptr op = base(out, DType.F32, "out");
        CUdeviceptr xp = base(x, DType.F32, "x");
        m.checkRows(hostInts(rows, "rows"), 0, "gatherRows rows");
        launch("gather_rows_f32", (long) m.mappedRows() * m.channels(), op, out.offset(), xp, x.offset(),
                base(rows, DType.I32, "rows"), rows.offset(), m.mappedRows(), m.channels());
    }

    public void scatterAddRows(Tensor out, Tensor x, Tensor rows, Tensor weights) {
        RowMap m = RowMap.checkScatter(out, x, rows, weights);
        CUdeviceptr op = base(out, DType.F32, "out");
        CUdeviceptr xp = base(x, DType.F32, "x");
        CUdeviceptr wp = weights == null ? new CUdeviceptr() : base(weights, DType.F32, "weights");
        int[] rv = hostInts(rows, "rows");
        m.checkRows(rv, 0, "scatterAddRows rows");
        scatterRows(op, out.offset(), xp, x.offset(), wp, weights == null ? 0 : weights.offset(), rv, m.denseRows(),
                m.channels());
    }

    /**
     * out[rows[i], :] += (w[i]·) x[i, :] in increasing i per destination row, skipping −1: a
     * counting pass inverts the checked host rows into scatter_add_rows_f32's groups (each
     * distinct destination, where its sources start, the sources in order), so one thread per
     * (destination, column) sums in the CPU's order. A null {@code w} pointer means unweighted.
     */
    private void scatterRows(CUdeviceptr out, int oo, CUdeviceptr x, int ox, CUdeviceptr w, int ow, int[] rows,
                             int denseRows, int cols) {
        int[] count = new int[denseRows];
        int distinct = 0;
        int sources = 0;
        for (int r : rows) {
            if (r != -1) {
                if (count[r]++ == 0) {
                    distinct++;
                }
                sources++;
            }
        }
        if (sources == 0 || cols == 0) {
            return;
        }
        int[] groups = new int[2 * distinct + 1 + sources];
        int[] next = new int[denseRows];
        int u = 0;
        int slot = 0;
        for (int r = 0; r < denseRows; r++) {
            if (count[r] > 0) {
                groups[u] = r;
                groups[distinct + u] = slot;
                next[r] = slot;
                slot += count[r];
                u++;
            }
        }
        groups[2 * distinct] = sources;
        for (int i = 0; i < rows.length; i++) {
            if (rows[i] != -1) {
                groups[2 * distinct + 1 + next[rows[i]]++] = i;
            }
        }
        try (Tensor g = device.allocate(DType.I32, groups.length)) {
            copyFromHost(g, groups);
            launch("scatter_add_rows_f32", (long) distinct * cols, out, oo, x, ox, w, ow, base(g, DType.I32, "groups"),
                    g.offset(), distinct, cols);
        }
    }

    public void entryTokens(Tensor rows, Tensor entries, int k) {
        MoeRouting.checkEntryTokens(rows, entries, k);
        CUdeviceptr rp = base(rows, DType.I32, "rows");
        MoeRouting.checkEntries(hostInts(entries, "entries"), 0, entries.numel(), "entryTokens entries");
        launch("entry_tokens", entries.numel(), rp, rows.offset(), base(entries, DType.I32, "entries"), entries.offset(),
                entries.numel(), k);
    }

    public void capacitySlots(Tensor slots, Tensor order, Tensor offsets, int capacity) {
        MoeRouting m = MoeRouting.checkCapacity(slots, order, offsets, capacity);
        CUdeviceptr sp = base(slots, DType.I32, "slots");
        CUdeviceptr op = base(order, DType.I32, "order");
        m.checkOffsetsRange(hostInts(offsets, "offsets"), 0, "capacitySlots offsets");
        launch("capacity_slots", slots.numel(), sp, slots.offset(), op, order.offset(), base(offsets, DType.I32, "offsets"),
                offsets.offset(), m.experts(), capacity);
    }

    public void scaleRows(Tensor out, Tensor x, Tensor s) {
        checkScaleRows(out, x, s);
        launch("scale_rows_f32", x.numel(), base(out, DType.F32, "out"), out.offset(), base(x, DType.F32, "x"), x.offset(),
                base(s, DType.F32, "s"), s.offset(), x.rows(), x.cols());
    }

    public void uniformNoise(Tensor out, float lo, float hi, long seed) {
        Noise.checkRange(lo, hi);
        launch("uniform_noise_f32", out.numel(), base(out, DType.F32, "out"), out.offset(), out.numel(), lo, hi, seed);
    }

    public void rmsNormForward(Tensor out, Tensor rstd, Tensor x, Tensor weight, float eps) {
        int rows = x.rows();
        int cols = x.cols();
        KernelChecks.checkRmsNormForward(out, rstd, x, weight);
        launchRows("rms_norm_forward_f32", rows, base(out, DType.F32, "out"), out.offset(), base(rstd, DType.F32, "rstd"),
                rstd.offset(), base(x, DType.F32, "x"), x.offset(), base(weight, DType.F32, "weight"), weight.offset(),
                rows, cols, eps);
    }

    public void rmsNormBackward(Tensor dx, Tensor dweight, Tensor dy, Tensor x, Tensor weight, Tensor rstd) {
        int rows = x.rows();
        int cols = x.cols();
        KernelChecks.checkRmsNormBackward(dx, dweight, dy, x, weight, rstd);
        CUdeviceptr dyp = base(dy, DType.F32, "dy");
        CUdeviceptr xp = base(x, DType.F32, "x");
        CUdeviceptr rp = base(rstd, DType.F32, "rstd");
        launchRows("rms_norm_backward_dx_f32", rows, base(dx, DType.F32, "dx"), dx.offset(), dyp, dy.offset(), xp,
                x.offset(), base(weight, DType.F32, "weight"), weight.offset(), rp, rstd.offset(), rows, cols);
        launch("rms_norm_backward_dw_f32", cols, base(dweight, DType.F32, "dweight"), dweight.offset(), dyp, dy.offset(),
                xp, x.offset(), rp, rstd.offset(), rows, cols);
    }

    public void unaryBackward(UnaryOp op, Tensor dx, Tensor dy, Tensor x) {
        sameNumel(dx, "unary backward dx", x, "x");
        sameNumel(dy, "unary backward dy", x, "x");
        launch("unary_backward_f32", x.numel(), op.ordinal(), base(dx, DType.F32, "dx"), dx.offset(),
                base(dy, DType.F32, "dy"), dy.offset(), base(x, DType.F32, "x"), x.offset(), x.numel());
    }

    // ---- attention and the bias gradient (CudaAttention, attention.cu) ----

    public void attentionForward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, Varlen cuSeqlensQ, Varlen cuSeqlensK,
                                 Attention attn) {
        attention.forward(out, lse, q, k, v, cuSeqlensQ, cuSeqlensK, attn);
    }

    public void attentionBackward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out,
                                  Tensor lse, Varlen cuSeqlensQ, Varlen cuSeqlensK, Attention attn) {
        attention.backward(dq, dk, dv, dout, q, k, v, out, lse, cuSeqlensQ, cuSeqlensK, attn);
    }

    public void addColumnSums(Tensor out, Tensor x) {
        attention.addColumnSums(out, x);
    }

    // ---- causal long convolution, linear attention, the diagonal SSM and FAVOR+ (CudaSsm, ssm.cu) ----

    public void causalConvForward(Tensor y, Tensor u, Tensor k, Varlen cuSeqlens) {
        ssm.causalConvForward(y, u, k, cuSeqlens);
    }

    public void causalConvBackward(Tensor du, Tensor dk, Tensor dy, Tensor u, Tensor k, Varlen cuSeqlens) {
        ssm.causalConvBackward(du, dk, dy, u, k, cuSeqlens);
    }

    public void linearAttentionForward(Tensor out, Tensor q, Tensor k, Tensor v, Varlen cuSeqlens, int heads, float eps) {
        ssm.linearAttentionForward(out, q, k, v, cuSeqlens, heads, eps);
    }

    public void linearAttentionBackward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v,
                                        Varlen cuSeqlens, int heads, float eps) {
        ssm.linearAttentionBackward(dq, dk, dv, dout, q, k, v, cuSeqlens, heads, eps);
    }

    public void linearAttentionStep(Tensor out, Tensor state, Tensor norm, Tensor q, Tensor k, Tensor v, int heads,
                                    float eps) {
        ssm.linearAttentionStep(out, state, norm, q, k, v, heads, eps);
    }

    public void ssmConvForward(Tensor y, Tensor u, Tensor logDt, Tensor aRe, Tensor aIm, Tensor c, Varlen cuSeqlens,
                               int block) {
        ssm.ssmConvForward(y, u, logDt, aRe, aIm, c, cuSeqlens, block);
    }

    public void ssmConvBackward(Tensor du, Tensor dlogDt, Tensor daRe, Tensor daIm, Tensor dc, Tensor dy, Tensor u,
                                Tensor logDt, Tensor aRe, Tensor aIm, Tensor c, Varlen cuSeqlens, int block) {
        ssm.ssmConvBackward(du, dlogDt, daRe, daIm, dc, dy, u, logDt, aRe, aIm, c, cuSeqlens, block);
    }

    public void ssmStep(Tensor y, Tensor state, Tensor u, Tensor logDt, Tensor aRe, Tensor aIm, Tensor c) {
        ssm.ssmStep(y, state, u, logDt, aRe, aIm, c);
    }

    public void favorFeatures(Tensor out, Tensor x, Tensor w, int heads, boolean query) {
        ssm.favorFeatures(out, x, w, heads, query);
    }

    public void favorFeaturesBackward(Tensor dx, Tensor dout, Tensor out, Tensor x, Tensor w, int heads, boolean query) {
        ssm.favorFeaturesBackward(dx, dout, out, x, w, heads, query);
    }
}
