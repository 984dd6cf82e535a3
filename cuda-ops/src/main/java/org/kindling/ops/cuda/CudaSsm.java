package org.kindling.ops.cuda;

import static org.kindling.ops.cuda.Cuda.check;

import java.util.HashMap;
import java.util.Map;
import jcuda.driver.CUdeviceptr;
import jcuda.driver.CUfunction;
import jcuda.driver.CUfunction_attribute;
import jcuda.driver.CUmodule;
import jcuda.driver.JCudaDriver;
import org.kindling.ops.CausalConv;
import org.kindling.ops.DType;
import org.kindling.ops.FavorFeatures;
import org.kindling.ops.LinearAttention;
import org.kindling.ops.Ssm;
import org.kindling.ops.Tensor;
import org.kindling.ops.Varlen;

/**
 * ssm.cu on one device: causal long convolution, causal linear attention and the diagonal
 * state-space convolution over packed variable-length sequences, and FAVOR+ features (M up to
 * {@link #MAX_FEATURES}), with the CPU backend's argument checks ({@link CausalConv},
 * {@link LinearAttention}, {@link Ssm}, {@link FavorFeatures}). The state-space convolution
 * forms its kernel for the longest sequence and convolves directly, so the CPU's FFT block size
 * does not change the result. Each output element is summed by one thread in a fixed order, in
 * double (see ssm.cu), so results are deterministic and need no float atomics. Linear attention
 * keeps its F×(D + 1) state in shared memory, so F and D are at most {@link #MAX_DIM}.
 */
final class CudaSsm {
    /** ssm.cu's LA_CHUNK. */
    private static final int CHUNK = 16;
    private static final int THREADS = 256;
    static final int MAX_DIM = 128;
    /** FAVOR+ keeps a row's M logits in double in the default 48 KiB of shared memory. */
    static final int MAX_FEATURES = 4096;
    /** The grid's y limit; the kernels loop over sequences beyond it. */
    private static final int MAX_GRID_Y = 65535;
    /** Grid-stride loops cover the rest; more blocks than this only adds scheduling. */
    private static final long MAX_BLOCKS = 1 << 16;
    static final String[] FUNCTIONS = {"causal_conv_forward_f32", "causal_conv_backward_du_f32",
        "causal_conv_backward_dk_f32", "linear_attention_forward_f32", "linear_attention_backward_f32",
        "linear_attention_check_features_f32", "ssm_kernel_f32", "ssm_param_grads_f32", "ssm_sum_modes_f32",
        "ssm_step_f32", "favor_features_f32", "favor_features_backward_f32"};

    private final CudaDevice device;
    private final Map<String, CUfunction> functions = new HashMap<>();

    CudaSsm(CudaDevice device, CUmodule module) {
        this.device = device;
        for (String name : FUNCTIONS) {
            CUfunction f = new CUfunction();
            check(JCudaDriver.cuModuleGetFunction(f, module, name), "cuModuleGetFunction(" + name + ")");
            functions.put(name, f);
        }
        // The widest states (F = D = 128) need more than the default 48 KiB of shared memory per block.
        for (String name : new String[] {"linear_attention_forward_f32", "linear_attention_backward_f32"}) {
            check(JCudaDriver.cuFuncSetAttribute(functions.get(name),
                    CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, sharedBytes(MAX_DIM, MAX_DIM)),
                    "cuFuncSetAttribute(" + name + ", max dynamic shared memory)");
        }
    }

    /** ssm.cu's LaShared: the state [F, D + 1], two CH×CH score tiles and [CH, D + 1] in double; q, k, v tiles in float. */
    private static int sharedBytes(int f, int d) {
        int doubles = f * (d + 1) + 2 * CHUNK * CHUNK + CHUNK * (d + 1);
        int floats = 2 * CHUNK * f + CHUNK * d;
        return doubles * Double.BYTES + floats * Float.BYTES;
    }

    private CUdeviceptr base(Tensor t, DType want, String what) {
        return device.storage(t, want, what).ptr();
    }

    private void launch(String name, int gx, int gy, int shared, Object... args) {
        if (gx == 0 || gy == 0) {
            return;
        }
        device.makeCurrent();
        check(JCudaDriver.cuLaunchKernel(functions.get(name), gx, gy, 1, THREADS, 1, 1, shared, device.stream(),
                Cuda.params(name, args), null), "launch of " + name);
    }

    private void launchElementwise(String name, long n, Object... args) {
        launch(name, (int) Math.min((n + THREADS - 1) / THREADS, MAX_BLOCKS), 1, 0, args);
    }

    // ---- causal long convolution ----

    void causalConvForward(Tensor y, Tensor u, Tensor k, Varlen cuSeqlens) {
        CausalConv c = CausalConv.check(y, u, k, cuSeqlens);
        Tensor cu = cuSeqlens.device();
        launchElementwise("causal_conv_forward_f32", (long) c.tokens() * c.channels(), base(y, DType.F32, "causal conv y"),
                y.offset(), base(u, DType.F32, "causal conv u"), u.offset(), base(k, DType.F32, "causal conv k"), k.offset(),
                base(cu, DType.I32, "cu_seqlens"), cu.offset(), c.sequences(), c.tokens(), c.channels(), c.kernelLength());
    }

    void causalConvBackward(Tensor du, Tensor dk, Tensor dy, Tensor u, Tensor k, Varlen cuSeqlens) {
        CausalConv c = CausalConv.checkBackward(du, dk, dy, u, k, cuSeqlens);
        Tensor cu = cuSeqlens.device();
        CUdeviceptr pcu = base(cu, DType.I32, "cu_seqlens");
        CUdeviceptr pdy = base(dy, DType.F32, "causal conv dy");
        launchElementwise("causal_conv_backward_du_f32", (long) c.tokens() * c.channels(),
                base(du, DType.F32, "causal conv du"), du.offset(), pdy, dy.offset(), base(k, DType.F32, "causal conv k"),
                k.offset(), pcu, cu.offset(), c.sequences(), c.tokens(), c.channels(), c.kernelLength());
        // Taps past the longest sequence reach no token: their gradient is zero, as on the CPU.
        int taps = Math.min(c.kernelLength(), c.maxLength());
        launchElementwise("causal_conv_backward_dk_f32", (long) taps * c.channels(), base(dk, DType.F32, "causal conv dk"),
                dk.offset(), pdy, dy.offset(), base(u, DType.F32, "causal conv u"), u.offset(), pcu, cu.offset(),
                c.sequences(), c.channels(), taps);
    }

    // ---- causal linear attention ----

    private void checkDims(LinearAttention l) {
        if (l.features() > MAX_DIM || l.headDim() > MAX_DIM) {
            throw new IllegalArgumentException("linear attention on " + device + " supports feature and head dims up to "
                    + MAX_DIM + ", got F = " + l.features() + " and D = " + l.headDim());
        }
    }

    /** Fails as the CPU does on the first negative or NaN feature, found on the device; one int comes back. */
    private void checkFeatures(String what, Tensor x, int rowLength) {
        int n = x.numel();
        if (n == 0) {
            return;
        }
        try (Tensor bad = device.fromInts(new int[] {Integer.MAX_VALUE}, 1)) {
            launchElementwise("linear_attention_check_features_f32", n, base(x, DType.F32, "linear attention " + what),
                    x.offset(), n, base(bad, DType.I32, "feature check"));
            int at = bad.toIntArray()[0];
            if (at != Integer.MAX_VALUE) {
                float v = x.view(at, 1).toFloatArray()[0];
                LinearAttention.checkFeatures(what, at + 1, rowLength, i -> i == at ? v : 0);
            }
        }
    }

    private Object[] operands(Tensor q, Tensor k, Tensor v) {
        return new Object[] {base(q, DType.F32, "linear attention q"), q.offset(), base(k, DType.F32, "linear attention k"),
            k.offset(), base(v, DType.F32, "linear attention v"), v.offset()};
    }

    private static Object[] concat(Object[]... parts) {
        int n = 0;
        for (Object[] p : parts) {
            n += p.length;
        }
        Object[] out = new Object[n];
        int at = 0;
        for (Object[] p : parts) {
            System.arraycopy(p, 0, out, at, p.length);
            at += p.length;
        }
        return out;
    }

    void linearAttentionForward(Tensor out, Tensor q, Tensor k, Tensor v, Varlen cuSeqlens, int heads, float eps) {
        LinearAttention l = LinearAttention.check(out, q, k, v, cuSeqlens, heads, eps);
        checkDims(l);
        checkFeatures("q", q, heads * l.features());
        checkFeatures("k", k, heads * l.features());
        if (l.tokens() == 0) {
            return;
        }
        Tensor cu = cuSeqlens.device();
        launch("linear_attention_forward_f32", heads, Math.min(l.sequences(), MAX_GRID_Y),
                sharedBytes(l.features(), l.headDim()), concat(new Object[] {base(out, DType.F32, "linear attention out"),
                    out.offset()}, operands(q, k, v), new Object[] {base(cu, DType.I32, "cu_seqlens"), cu.offset(),
                    l.sequences(), l.tokens(), heads, l.features(), l.headDim(), eps, new CUdeviceptr(), 0,
                    new CUdeviceptr(), 0}));
    }

    void linearAttentionBackward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v,
                                 Varlen cuSeqlens, int heads, float eps) {
        LinearAttention l = LinearAttention.check(dout, q, k, v, cuSeqlens, heads, eps);
        l.checkGrads(dq, dk, dv, dout, q, k, v);
        checkDims(l);
        checkFeatures("q", q, heads * l.features());
        checkFeatures("k", k, heads * l.features());
        if (l.tokens() == 0) {
            return;
        }
        Tensor cu = cuSeqlens.device();
        // U = (dout/n, c) per token and head, in double, for the reverse walk (as the CPU keeps it per worker).
        CUdeviceptr scratch = device.allocZeroed((long) l.tokens() * heads * (l.headDim() + 1) * Double.BYTES);
        try {
            launch("linear_attention_backward_f32", heads, Math.min(l.sequences(), MAX_GRID_Y),
                    sharedBytes(l.features(), l.headDim()), concat(new Object[] {base(dq, DType.F32, "linear attention dq"),
                        dq.offset(), base(dk, DType.F32, "linear attention dk"), dk.offset(),
                        base(dv, DType.F32, "linear attention dv"), dv.offset(),
                        base(dout, DType.F32, "linear attention dout"), dout.offset()}, operands(q, k, v),
                        new Object[] {base(cu, DType.I32, "cu_seqlens"), cu.offset(), l.sequences(), heads, l.features(),
                            l.headDim(), eps, scratch}));
        } finally {
            device.free(scratch);
        }
    }

    void linearAttentionStep(Tensor out, Tensor state, Tensor norm, Tensor q, Tensor k, Tensor v, int heads, float eps) {
        LinearAttention l = LinearAttention.checkStep(out, state, norm, q, k, v, heads, eps);
        checkDims(l);
        checkFeatures("q", q, heads * l.features());
        checkFeatures("k", k, heads * l.features());
        if (l.tokens() == 0) {
            return;
        }
        launch("linear_attention_forward_f32", heads, 1, sharedBytes(l.features(), l.headDim()),
                concat(new Object[] {base(out, DType.F32, "linear attention out"), out.offset()}, operands(q, k, v),
                    new Object[] {new CUdeviceptr(), 0, 1, l.tokens(), heads, l.features(), l.headDim(), eps,
                        base(state, DType.F32, "linear attention state"), state.offset(),
                        base(norm, DType.F32, "linear attention norm"), norm.offset()}));
    }

    // ---- diagonal state-space convolution ----

    /** The parameters' pointer-offset pairs in the kernels' order: logDt, aRe, aIm, c. */
    private Object[] ssmParams(Tensor logDt, Tensor aRe, Tensor aIm, Tensor c) {
        return new Object[] {base(logDt, DType.F32, "ssm logDt"), logDt.offset(), base(aRe, DType.F32, "ssm aRe"),
            aRe.offset(), base(aIm, DType.F32, "ssm aIm"), aIm.offset(), base(c, DType.F32, "ssm c"), c.offset()};
    }

    /** K [lags, C] of the parameters on the device; the caller closes it. */
    private Tensor ssmKernel(Ssm s, int lags, Tensor logDt, Tensor aRe, Tensor aIm, Tensor c) {
        Tensor k = device.allocate(DType.F32, lags, s.channels());
        launchElementwise("ssm_kernel_f32", (long) lags * s.channels(), concat(new Object[] {base(k, DType.F32, "ssm K")},
                ssmParams(logDt, aRe, aIm, c), new Object[] {s.channels(), s.modes(), lags}));
        return k;
    }

    void ssmConvForward(Tensor y, Tensor u, Tensor logDt, Tensor aRe, Tensor aIm, Tensor c, Varlen cuSeqlens, int block) {
        Ssm s = Ssm.check(y, u, logDt, aRe, aIm, c, cuSeqlens, block);
        if (s.maxLength() == 0) {
            return;
        }
        try (Tensor k = ssmKernel(s, s.maxLength(), logDt, aRe, aIm, c)) {
            causalConvForward(y, u, k, cuSeqlens);
        }
    }

    void ssmConvBackward(Tensor du, Tensor dlogDt, Tensor daRe, Tensor daIm, Tensor dc, Tensor dy, Tensor u,
                         Tensor logDt, Tensor aRe, Tensor aIm, Tensor c, Varlen cuSeqlens, int block) {
        Ssm s = Ssm.checkBackward(du, dlogDt, daRe, daIm, dc, dy, u, logDt, aRe, aIm, c, cuSeqlens, block);
        int lags = s.maxLength();
        if (lags == 0) {
            return;
        }
        int modes = s.channels() * s.modes();
        try (Tensor k = ssmKernel(s, lags, logDt, aRe, aIm, c); Tensor dk = device.allocate(DType.F32, lags, s.channels())) {
            causalConvBackward(du, dk, dy, u, k, cuSeqlens);
            // Each mode's share of dlogDt, in double, summed per channel in mode order by ssm_sum_modes_f32.
            CUdeviceptr part = device.allocZeroed((long) modes * Double.BYTES);
            try {
                launchElementwise("ssm_param_grads_f32", modes, concat(new Object[] {base(daRe, DType.F32, "ssm daRe"),
                    daRe.offset(), base(daIm, DType.F32, "ssm daIm"), daIm.offset(), base(dc, DType.F32, "ssm dc"),
                    dc.offset(), part, base(dk, DType.F32, "ssm dK")}, ssmParams(logDt, aRe, aIm, c),
                    new Object[] {s.channels(), s.modes(), lags}));
                launchElementwise("ssm_sum_modes_f32", s.channels(), base(dlogDt, DType.F32, "ssm dlogDt"), dlogDt.offset(),
                        part, s.channels(), s.modes());
            } finally {
                device.free(part);
            }
        }
    }

    void ssmStep(Tensor y, Tensor state, Tensor u, Tensor logDt, Tensor aRe, Tensor aIm, Tensor c) {
        Ssm s = Ssm.checkStep(y, state, u, logDt, aRe, aIm, c);
        if (s.tokens() == 0) {
            return;
        }
        // {Ā, w, x} per mode in double, so the state rounds to F32 once per call rather than per token.
        CUdeviceptr modes = device.allocZeroed((long) s.channels() * s.modes() * 6 * Double.BYTES);
        try {
            launchElementwise("ssm_step_f32", s.channels(), concat(new Object[] {base(y, DType.F32, "ssm y"), y.offset(),
                base(state, DType.F32, "ssm state"), state.offset(), base(u, DType.F32, "ssm u"), u.offset()},
                ssmParams(logDt, aRe, aIm, c), new Object[] {s.tokens(), s.channels(), s.modes(), modes}));
        } finally {
            device.free(modes);
        }
    }

    // ---- FAVOR+ features ----

    /** Row-heads, after refusing more features than a block's shared memory holds. */
    private int favorRows(FavorFeatures f) {
        if (f.features() > MAX_FEATURES) {
            throw new IllegalArgumentException("favor features on " + device + " support up to " + MAX_FEATURES
                    + " features (rows of w), got " + f.features());
        }
        return f.tokens() * f.heads();
    }

    void favorFeatures(Tensor out, Tensor x, Tensor w, int heads, boolean query) {
        FavorFeatures f = FavorFeatures.check(out, x, w, heads);
        int rows = favorRows(f);
        launch("favor_features_f32", (int) Math.min(rows, MAX_BLOCKS), 1, f.features() * Double.BYTES,
                base(out, DType.F32, "favor features out"), out.offset(), base(x, DType.F32, "favor features x"), x.offset(),
                base(w, DType.F32, "favor features w"), w.offset(), rows, f.headDim(), f.features(), query ? 1 : 0);
    }

    void favorFeaturesBackward(Tensor dx, Tensor dout, Tensor out, Tensor x, Tensor w, int heads, boolean query) {
        FavorFeatures f = FavorFeatures.checkBackward(dx, dout, out, x, w, heads);
        int rows = favorRows(f);
        launch("favor_features_backward_f32", (int) Math.min(rows, MAX_BLOCKS), 1, f.features() * Double.BYTES,
                base(dx, DType.F32, "favor features dx"), dx.offset(), base(dout, DType.F32, "favor features dout"),
                dout.offset(), base(out, DType.F32, "favor features out"), out.offset(),
                base(x, DType.F32, "favor features x"), x.offset(), base(w, DType.F32, "favor features w"), w.offset(), rows,
                f.headDim(), f.features(), query ? 1 : 0);
    }
}
