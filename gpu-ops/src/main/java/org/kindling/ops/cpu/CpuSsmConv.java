package org.kindling.ops.cpu;

import java.util.Arrays;
import org.jtransforms.fft.FloatFFT_1D;
import org.kindling.ops.DType;
import org.kindling.ops.KernelChecks;
import org.kindling.ops.Ssm;
import org.kindling.ops.Tensor;
import org.kindling.ops.Varlen;

/**
 * The diagonal state-space convolution (S4D, H3) on the CPU, FlashConv-style (see {@link Ssm}).
 *
 * <p>Forward, one item per (sequence, channel): the kernel's first b = min(block, len) lags by the
 * Vandermonde product in double (powers of Ā by repeated multiplication), then each b-token block
 * convolved with them through {@link CpuCausalConv}'s machinery (direct in double up to
 * {@link CpuCausalConv#DIRECT_MAX} lags, else one fp32 real FFT of the kernel per item and three
 * per block), plus the earlier blocks' contribution carried by the N complex states in double:
 * y[t0 + i] += 2·Re(Σ_n w_n·Ā_n^(i+1)·x_n), then x ← Ā^b·x + Σ_j Ā^(b−1−j)·u_j. Cost per sequence
 * and channel O(len·(log b + N)); no kernel longer than b is ever built.
 *
 * <p>Backward (the O(T log T + T·N) route, not the adjoint state passing): the kernel over all lags
 * of the longest sequence is built once, {@link CpuCausalConv#backward} gives du and dK by FFT
 * correlation, and dK is chained through the Vandermonde product per channel by Horner's rule
 * (Σ_j dK_j·Ā^j and its derivative in Ā together).
 *
 * <p>Each item's arithmetic is independent of the thread, and every output has one writer, so
 * results are bit-identical across thread counts.
 */
final class CpuSsmConv {
    private final CpuDevice device;
    private final CpuPool pool;
    private final CpuCausalConv conv;

    CpuSsmConv(CpuDevice device, CpuPool pool, CpuCausalConv conv) {
        this.device = device;
        this.pool = pool;
        this.conv = conv;
    }

    private static float[] f(Tensor t, String what) {
        return KernelChecks.storage(t, DType.F32, CpuStorage.class, "the CPU", "ssm " + what).floats();
    }

    /** The parameter tensors' arrays, read once per call. */
    private record Params(float[] logDt, int dtOff, float[] aRe, int aReOff, float[] aIm, int aImOff, float[] c,
                          int cOff, int modes) {
        static Params of(Tensor logDt, Tensor aRe, Tensor aIm, Tensor c, int modes) {
            return new Params(f(logDt, "logDt"), logDt.offset(), f(aRe, "aRe"), aRe.offset(), f(aIm, "aIm"),
                    aIm.offset(), f(c, "c"), c.offset(), modes);
        }

        double dt(int ch) {
            return Math.exp(logDt[dtOff + ch]);
        }

        /** {@link Ssm#zoh} of mode n of channel ch. */
        double[] zoh(int ch, int n) {
            int i = ch * modes + n;
            return Ssm.zoh(dt(ch), aRe[aReOff + i], aIm[aImOff + i], c[cOff + 2 * i], c[cOff + 2 * i + 1]);
        }

        /** z[4n …] = {Re Ā, Im Ā, Re w, Im w} of each mode of channel ch. */
        void discretize(int ch, double[] z) {
            for (int n = 0; n < modes; n++) {
                double[] m = zoh(ch, n);
                z[4 * n] = m[0];
                z[4 * n + 1] = m[1];
                z[4 * n + 2] = m[4];
                z[4 * n + 3] = m[5];
            }
        }
    }

    /**
     * dst[off + j·stride] = K[j] = 2·Re(Σ_n w_n·Ā_n^j) for j &lt; lags, from z of {@link Params#discretize};
     * p (2N doubles) is scratch for the powers.
     */
    private static void kernel(double[] z, int modes, int lags, double[] p, float[] dst, int off, int stride) {
        for (int n = 0; n < modes; n++) {
            p[2 * n] = 1;
            p[2 * n + 1] = 0;
        }
        for (int j = 0; j < lags; j++) {
            double acc = 0;
            for (int n = 0; n < modes; n++) {
                double pr = p[2 * n];
                double pi = p[2 * n + 1];
                double br = z[4 * n];
                double bi = z[4 * n + 1];
                acc += z[4 * n + 2] * pr - z[4 * n + 3] * pi;
                p[2 * n] = pr * br - pi * bi;
                p[2 * n + 1] = pr * bi + pi * br;
            }
            dst[off + j * stride] = (float) (2 * acc);
        }
    }

    // ---- forward ----

    void forward(Tensor y, Tensor u, Tensor logDt, Tensor aRe, Tensor aIm, Tensor c, Varlen cuSeqlens, int block) {
        Ssm m = Ssm.check(y, u, logDt, aRe, aIm, c, cuSeqlens, block);
        float[] yv = f(y, "y");
        float[] uv = f(u, "u");
        Params p = Params.of(logDt, aRe, aIm, c, m.modes());
        int ch = m.channels();
        int modes = m.modes();
        int b = Math.min(block, m.maxLength());
        if (b == 0) {
            return;
        }
        // Per channel, once per call: {Ā, w} of every mode and the kernel's first b lags (a shorter
        // sequence uses a prefix), so a batch of many sequences pays the Vandermonde product once.
        double[] zAll = new double[ch * 4 * modes];
        try (Tensor kernels = device.scratch(DType.F32, ch, b)) {
            float[] kv = f(kernels, "kernel scratch");
            int ko = kernels.offset();
            pool.parallelFor(ch, 1, (lo, hi) -> {
                double[] pw = new double[2 * modes];
                double[] zc = new double[4 * modes];
                for (int cc = lo; cc < hi; cc++) {
                    p.discretize(cc, zc);
                    System.arraycopy(zc, 0, zAll, cc * 4 * modes, 4 * modes);
                    kernel(zc, modes, b, pw, kv, ko + cc * b, 1);
                }
            });
            forwardItems(m, yv, y.offset(), uv, u.offset(), zAll, kv, ko, b);
        }
    }

    /** The (sequence, channel) items of {@link #forward}, from the per-channel {Ā, w} and kernels [C, b]. */
    private void forwardItems(Ssm m, float[] yv, int yOff, float[] uv, int uOff, double[] zAll, float[] kv, int ko, int b) {
        int ch = m.channels();
        int modes = m.modes();
        int scratch = b > CpuCausalConv.DIRECT_MAX ? 2 * CpuCausalConv.fftSize(b) : Math.max(1, b);
        pool.runItems(device, m.sequences() * ch, scratch, (it, ws, w) -> {
            int s = it / ch;
            int cc = it % ch;
            int base = m.cu()[s];
            int len = m.length(s);
            if (len == 0) {
                return;
            }
            int lags = Math.min(b, len);
            boolean fft = lags > CpuCausalConv.DIRECT_MAX;
            int nfft = fft ? CpuCausalConv.fftSize(lags) : 0;
            int kb = fft ? w + nfft : w;
            // z: {Ā, w} per mode; x: the state; v: w·Ā^(i+1)·x while a block is carried.
            double[] z = Arrays.copyOfRange(zAll, cc * 4 * modes, (cc + 1) * 4 * modes);
            double[] x = new double[2 * modes];
            double[] v = new double[2 * modes];
            System.arraycopy(kv, ko + cc * b, ws, kb, lags);
            FloatFFT_1D plan = fft ? conv.plan(nfft) : null;
            if (fft) {
                Arrays.fill(ws, kb + lags, kb + nfft, 0f);
                plan.realForward(ws, kb);
            }
            for (int t0 = 0; t0 < len; t0 += lags) {
                int bl = Math.min(lags, len - t0);
                int row0 = base + t0;
                if (fft) {
                    CpuCausalConv.gather(uv, uOff, row0, bl, cc, ch, ws, w, nfft);
                    plan.realForward(ws, w);
                    // The unscaled inverse returns n/2 times the signal; 2/n is a power of two, so exact.
                    CpuCausalConv.multiply(ws, w, kb, nfft, false, 2f / nfft);
                    plan.realInverse(ws, w, false);
                }
                for (int n = 0; n < modes; n++) {
                    double wr = z[4 * n + 2];
                    double wi = z[4 * n + 3];
                    v[2 * n] = wr * x[2 * n] - wi * x[2 * n + 1];
                    v[2 * n + 1] = wr * x[2 * n + 1] + wi * x[2 * n];
                }
                for (int i = 0; i < bl; i++) {
                    double acc;
                    if (fft) {
                        acc = ws[w + i];
                    } else {
                        acc = 0;
                        for (int j = 0; j <= i; j++) {
                            acc += (double) ws[kb + j] * uv[uOff + (row0 + i - j) * ch + cc];
                        }
                    }
                    if (t0 > 0) {
                        double carry = 0;
                        for (int n = 0; n < modes; n++) {
                            double br = z[4 * n];
                            double bi = z[4 * n + 1];
                            double vr = v[2 * n];
                            double vi = v[2 * n + 1];
                            v[2 * n] = vr * br - vi * bi;
                            v[2 * n + 1] = vr * bi + vi * br;
                            carry += v[2 * n];
                        }
                        acc += 2 * carry;
                    }
                    yv[yOff + (row0 + i) * ch + cc] = (float) acc;
                }
                if (t0 + bl < len) {
                    for (int i = 0; i < bl; i++) {
                        advance(z, x, modes, uv[uOff + (row0 + i) * ch + cc]);
                    }
                }
            }
        });
    }

    /** x ← Ā·x + u for every mode. */
    private static void advance(double[] z, double[] x, int modes, double u) {
        for (int n = 0; n < modes; n++) {
            double br = z[4 * n];
            double bi = z[4 * n + 1];
            double xr = x[2 * n];
            double xi = x[2 * n + 1];
            x[2 * n] = br * xr - bi * xi + u;
            x[2 * n + 1] = br * xi + bi * xr;
        }
    }

    // ---- backward ----

    void backward(Tensor du, Tensor dlogDt, Tensor daRe, Tensor daIm, Tensor dc, Tensor dy, Tensor u, Tensor logDt,
                  Tensor aRe, Tensor aIm, Tensor c, Varlen cuSeqlens, int block) {
        Ssm m = Ssm.checkBackward(du, dlogDt, daRe, daIm, dc, dy, u, logDt, aRe, aIm, c, cuSeqlens, block);
        int lags = m.maxLength();
        if (lags == 0) {
            return;
        }
        Params p = Params.of(logDt, aRe, aIm, c, m.modes());
        int ch = m.channels();
        int modes = m.modes();
        try (Tensor k = device.scratch(DType.F32, lags, ch); Tensor dk = device.scratch(DType.F32, lags, ch)) {
            float[] kv = f(k, "kernel");
            pool.runItems(device, ch, 1, (cc, ws, w) -> {
                double[] z = new double[4 * modes];
                p.discretize(cc, z);
                kernel(z, modes, lags, new double[2 * modes], kv, k.offset() + cc, ch);
            });
            conv.backward(du, dk, dy, u, k, cuSeqlens);
            float[] dkv = f(dk, "dK");
            float[] gDt = f(dlogDt, "dlogDt");
            float[] gRe = f(daRe, "daRe");
            float[] gIm = f(daIm, "daIm");
            float[] gC = f(dc, "dc");
            pool.runItems(device, ch, 1, (cc, ws, w) -> {
                double dt = p.dt(cc);
                double ddt = 0;
                for (int n = 0; n < modes; n++) {
                    double[] zm = p.zoh(cc, n);
                    double br = zm[0];
                    double bi = zm[1];
                    // Horner from the last lag: d ← d·Ā + s, s ← s·Ā + dK_j gives s = Σ dK_j Ā^j, d = Σ j·dK_j Ā^(j−1).
                    double sr = 0;
                    double si = 0;
                    double dr = 0;
                    double di = 0;
                    for (int j = lags - 1; j >= 0; j--) {
                        double nr = dr * br - di * bi + sr;
                        di = dr * bi + di * br + si;
                        dr = nr;
                        nr = sr * br - si * bi + dkv[dk.offset() + j * ch + cc];
                        si = sr * bi + si * br;
                        sr = nr;
                    }
                    int i = cc * modes + n;
                    ddt += chain(2 * sr, 2 * si, 2 * dr, 2 * di, zm, dt, p.aRe[p.aReOff + i], p.aIm[p.aImOff + i],
                            p.c[p.cOff + 2 * i], p.c[p.cOff + 2 * i + 1], gRe, daRe.offset() + i, gIm,
                            daIm.offset() + i, gC, dc.offset() + 2 * i);
                }
                gDt[dlogDt.offset() + cc] += (float) (dt * ddt);
            });
        }
    }

    /**
     * With S0 = 2·Σ_j dK_j·Ā^j and S1 = 2·Σ_j j·dK_j·Ā^(j−1), the loss is Re(h) for h = S0·w, holomorphic in
     * C̃, A and dt; a real parameter's gradient is Re of h's derivative along it. Adds the gradients of
     * aRe, aIm and c̃ and returns dL/ddt.
     */
    private static double chain(double s0r, double s0i, double s1r, double s1i, double[] zm, double dt, double aRe,
                                double aIm, double cr, double ci, float[] gRe, int reAt, float[] gIm, int imAt,
                                float[] gC, int cAt) {
        double br = zm[0];
        double bi = zm[1];
        double qr = zm[2];
        double qi = zm[3];
        double wr = zm[4];
        double wi = zm[5];
        double ar = -Math.exp(aRe);
        double den = ar * ar + aIm * aIm;
        // dh/dC̃ = S0·q.
        double hcr = s0r * qr - s0i * qi;
        double hci = s0r * qi + s0i * qr;
        gC[cAt] += (float) hcr;
        gC[cAt + 1] += (float) -hci;
        // G = S0·C̃/A + w·S1 = ∂h/∂Ā; with ∂w/∂A = −C̃·q/A, dh/dA = −S0·C̃·q/A + G·dt·Ā and dh/ddt = G·A·Ā.
        double ocr = (cr * ar + ci * aIm) / den;
        double oci = (ci * ar - cr * aIm) / den;
        double gr = s0r * ocr - s0i * oci + wr * s1r - wi * s1i;
        double gi = s0r * oci + s0i * ocr + wr * s1i + wi * s1r;
        double oqr = ocr * qr - oci * qi;
        double oqi = ocr * qi + oci * qr;
        double gbr = gr * br - gi * bi;
        double gbi = gr * bi + gi * br;
        double har = -(s0r * oqr - s0i * oqi) + dt * gbr;
        double hai = -(s0r * oqi + s0i * oqr) + dt * gbi;
        gRe[reAt] += (float) (har * ar);
        gIm[imAt] += (float) -hai;
        return gbr * ar - gbi * aIm;
    }

    // ---- recurrent step ----

    void step(Tensor y, Tensor state, Tensor u, Tensor logDt, Tensor aRe, Tensor aIm, Tensor c) {
        Ssm m = Ssm.checkStep(y, state, u, logDt, aRe, aIm, c);
        float[] yv = f(y, "y");
        float[] uv = f(u, "u");
        float[] sv = f(state, "state");
        Params p = Params.of(logDt, aRe, aIm, c, m.modes());
        int ch = m.channels();
        int modes = m.modes();
        pool.runItems(device, ch, 1, (cc, ws, w) -> {
            double[] z = new double[4 * modes];
            double[] x = new double[2 * modes];
            p.discretize(cc, z);
            int at = state.offset() + cc * modes * 2;
            for (int i = 0; i < 2 * modes; i++) {
                x[i] = sv[at + i];
            }
            for (int t = 0; t < m.tokens(); t++) {
                advance(z, x, modes, uv[u.offset() + t * ch + cc]);
                double acc = 0;
                for (int n = 0; n < modes; n++) {
                    acc += z[4 * n + 2] * x[2 * n] - z[4 * n + 3] * x[2 * n + 1];
                }
                yv[y.offset() + t * ch + cc] = (float) (2 * acc);
            }
            for (int i = 0; i < 2 * modes; i++) {
                sv[at + i] = (float) x[i];
            }
        });
    }
}
