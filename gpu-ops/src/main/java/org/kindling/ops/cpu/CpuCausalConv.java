package org.kindling.ops.cpu;

import java.util.Arrays;
import java.util.concurrent.ConcurrentHashMap;
import org.kindling.ops.CausalConv;
import org.kindling.ops.DType;
import org.kindling.ops.Tensor;

/**
 * Causal long convolution on the CPU (FlashConv's idea without the GPU: the whole convolution of
 * one sequence and two channels in one pass through a worker's scratch). Sequences of at most
 * {@link #DIRECT_MAX} tokens are summed directly in double; longer ones go through an fp32 FFT of
 * the next power of two ≥ 2·len − 1, so the circular convolution equals the causal one. Two real
 * channels ride in one complex transform (channel c in the real part, c + 1 in the imaginary) and
 * are separated in the frequency domain by conjugate symmetry.
 *
 * <p>Parallelism: the forward runs one item per (sequence, channel pair); the backward one per
 * channel pair, walking the sequences in order, because dk sums over sequences and must have a
 * single writer. An item's arithmetic does not depend on the thread, so results are bit-identical
 * for the same inputs and thread count. Scratch is allocated on the device.
 */
final class CpuCausalConv {
    /** Longest sequence summed directly: below this the O(len²) loop beats three FFTs of 2·len. */
    static final int DIRECT_MAX = 64;

    private final CpuDevice device;
    private final CpuPool pool;
    private final ConcurrentHashMap<Integer, Fft> plans = new ConcurrentHashMap<>();

    CpuCausalConv(CpuDevice device, CpuPool pool) {
        this.device = device;
        this.pool = pool;
    }

    private static float[] f(Tensor t) {
        return ((CpuStorage) t.storage()).floats();
    }

    private static void onCpu(Tensor t, String what) {
        if (!(t.storage() instanceof CpuStorage)) {
            throw new IllegalArgumentException("causal conv " + what + " is not on the CPU: " + t);
        }
    }

    private Fft plan(int len) {
        return plans.computeIfAbsent(Fft.sizeFor(len), Fft::new);
    }

    /** Complex values an FFT item needs per worker: the FFT size of the longest sequence, if any uses the FFT. */
    private static int fftSpan(CausalConv c) {
        return c.maxLength() > DIRECT_MAX ? Fft.sizeFor(c.maxLength()) : 0;
    }

    /** One call's operands. */
    private record Call(CausalConv c, float[] u, int ou, float[] k, int ok) {
        int pairs() {
            return (c.channels() + 1) / 2;
        }

        /** Loads rows [0, len) of channels c0 and c0 + 1 (0 where absent) of a [rows, C] array into re/im, zero-padded to n. */
        void gather(float[] src, int off, int row0, int len, int c0, float[] ws, int re, int im, int n) {
            int ch = c.channels();
            boolean two = c0 + 1 < ch;
            for (int t = 0; t < len; t++) {
                int at = off + (row0 + t) * ch + c0;
                ws[re + t] = src[at];
                ws[im + t] = two ? src[at + 1] : 0f;
            }
            Arrays.fill(ws, re + len, re + n, 0f);
            Arrays.fill(ws, im + len, im + n, 0f);
        }
    }

    // ---- forward ----

    void forward(Tensor y, Tensor u, Tensor k, Tensor cuSeqlens) {
        CausalConv c = CausalConv.check(y, u, k, cuSeqlens);
        onCpu(y, "y");
        onCpu(u, "u");
        onCpu(k, "k");
        Call call = new Call(c, f(u), u.offset(), f(k), k.offset());
        float[] out = f(y);
        int oy = y.offset();
        int pairs = call.pairs();
        int span = fftSpan(c);
        CpuItems.run(device, pool, c.sequences() * pairs, Math.max(1, 4 * span), (it, ws, w) -> {
            int s = it / pairs;
            int c0 = 2 * (it % pairs);
            int len = c.length(s);
            if (len <= DIRECT_MAX) {
                forwardDirect(call, s, c0, out, oy);
            } else {
                forwardFft(call, s, c0, out, oy, ws, w);
            }
        });
    }

    private static void forwardDirect(Call call, int s, int c0, float[] y, int oy) {
        int ch = call.c().channels();
        int base = call.c().cu()[s];
        int len = call.c().length(s);
        for (int cc = c0; cc < Math.min(c0 + 2, ch); cc++) {
            for (int t = 0; t < len; t++) {
                double acc = 0;
                for (int j = 0; j <= t; j++) {
                    acc += (double) call.k()[call.ok() + j * ch + cc] * call.u()[call.ou() + (base + t - j) * ch + cc];
                }
                y[oy + (base + t) * ch + cc] = (float) acc;
            }
        }
    }

    private void forwardFft(Call call, int s, int c0, float[] y, int oy, float[] ws, int w) {
        CausalConv c = call.c();
        int len = c.length(s);
        Fft fft = plan(len);
        int n = fft.n;
        int zr = w;
        int zi = w + n;
        int kr = w + 2 * n;
        int ki = w + 3 * n;
        call.gather(call.u(), call.ou(), c.cu()[s], len, c0, ws, zr, zi, n);
        call.gather(call.k(), call.ok(), 0, len, c0, ws, kr, ki, n);
        fft.transform(ws, zr, zi, false);
        fft.transform(ws, kr, ki, false);
        // Y = U₁K₁ + i·U₂K₂ with U₁ = (Z[f] + Z̄[n−f])/2, U₂ = (Z[f] − Z̄[n−f])/2i; the 1/4 and the
        // inverse's 1/n are powers of two, folded in exactly.
        float scale = 0.25f / n;
        for (int f = 0; f <= n / 2; f++) {
            int g = (n - f) & (n - 1);
            spectrumProduct(ws, zr, zi, kr, ki, f, g, scale, false);
        }
        fft.transform(ws, zr, zi, true);
        int ch = c.channels();
        boolean two = c0 + 1 < ch;
        for (int t = 0; t < len; t++) {
            int at = oy + (c.cu()[s] + t) * ch + c0;
            y[at] = ws[zr + t];
            if (two) {
                y[at + 1] = ws[zi + t];
            }
        }
    }

    /**
     * Replaces bins f and g = n − f of the packed spectrum a (two real channels) by the packed
     * spectrum of the channel-wise products of a's channels (their conjugates when {@code conj})
     * with b's, times scale. The two bins are read before either is written.
     */
    private static void spectrumProduct(float[] ws, int ar, int ai, int br, int bi, int f, int g, float scale,
                                        boolean conj) {
        float a1r = ws[ar + f] + ws[ar + g];
        float a1i = ws[ai + f] - ws[ai + g];
        float a2r = ws[ai + f] + ws[ai + g];
        float a2i = ws[ar + g] - ws[ar + f];
        float b1r = ws[br + f] + ws[br + g];
        float b1i = ws[bi + f] - ws[bi + g];
        float b2r = ws[bi + f] + ws[bi + g];
        float b2i = ws[br + g] - ws[br + f];
        if (conj) {
            a1i = -a1i;
            a2i = -a2i;
        }
        float pr = (a1r * b1r - a1i * b1i) * scale;
        float pi = (a1r * b1i + a1i * b1r) * scale;
        float qr = (a2r * b2r - a2i * b2i) * scale;
        float qi = (a2r * b2i + a2i * b2r) * scale;
        ws[ar + f] = pr - qi;
        ws[ai + f] = pi + qr;
        ws[ar + g] = pr + qi;
        ws[ai + g] = qr - pi;
    }

    // ---- backward ----

    void backward(Tensor du, Tensor dk, Tensor dy, Tensor u, Tensor k, Tensor cuSeqlens) {
        CausalConv c = CausalConv.checkBackward(du, dk, dy, u, k, cuSeqlens);
        onCpu(du, "du");
        onCpu(dk, "dk");
        onCpu(dy, "dy");
        onCpu(u, "u");
        onCpu(k, "k");
        Call call = new Call(c, f(u), u.offset(), f(k), k.offset());
        float[] g = f(dy);
        int og = dy.offset();
        float[] gu = f(du);
        int ogu = du.offset();
        float[] gk = f(dk);
        int ogk = dk.offset();
        int span = fftSpan(c);
        CpuItems.run(device, pool, call.pairs(), Math.max(1, 6 * span), (it, ws, w) -> {
            int c0 = 2 * it;
            for (int s = 0; s < c.sequences(); s++) {
                if (c.length(s) <= DIRECT_MAX) {
                    backwardDirect(call, s, c0, g, og, gu, ogu, gk, ogk);
                } else {
                    backwardFft(call, s, c0, g, og, gu, ogu, gk, ogk, ws, w);
                }
            }
        });
    }

    private static void backwardDirect(Call call, int s, int c0, float[] dy, int og, float[] du, int ogu, float[] dk,
                                       int ogk) {
        int ch = call.c().channels();
        int base = call.c().cu()[s];
        int len = call.c().length(s);
        float[] u = call.u();
        float[] k = call.k();
        for (int cc = c0; cc < Math.min(c0 + 2, ch); cc++) {
            for (int t = 0; t < len; t++) {
                double acc = 0;
                for (int q = t; q < len; q++) {
                    acc += (double) k[call.ok() + (q - t) * ch + cc] * dy[og + (base + q) * ch + cc];
                }
                du[ogu + (base + t) * ch + cc] += (float) acc;
            }
            for (int j = 0; j < len; j++) {
                double acc = 0;
                for (int t = j; t < len; t++) {
                    acc += (double) dy[og + (base + t) * ch + cc] * u[call.ou() + (base + t - j) * ch + cc];
                }
                dk[ogk + j * ch + cc] += (float) acc;
            }
        }
    }

    private void backwardFft(Call call, int s, int c0, float[] dy, int og, float[] du, int ogu, float[] dk, int ogk,
                             float[] ws, int w) {
        CausalConv c = call.c();
        int len = c.length(s);
        int base = c.cu()[s];
        Fft fft = plan(len);
        int n = fft.n;
        int gr = w;
        int gi = w + n;
        int kr = w + 2 * n;
        int ki = w + 3 * n;
        int ur = w + 4 * n;
        int ui = w + 5 * n;
        call.gather(dy, og, base, len, c0, ws, gr, gi, n);
        call.gather(call.k(), call.ok(), 0, len, c0, ws, kr, ki, n);
        call.gather(call.u(), call.ou(), base, len, c0, ws, ur, ui, n);
        fft.transform(ws, gr, gi, false);
        fft.transform(ws, kr, ki, false);
        fft.transform(ws, ur, ui, false);
        // du = dy ⋆ k (correlation: conj(K)·DY) and dk = dy ⋆ u (conj(U)·DY); with n ≥ 2·len − 1
        // the negative lags wrap past index len, where they are not read.
        float scale = 0.25f / n;
        for (int f = 0; f <= n / 2; f++) {
            int g = (n - f) & (n - 1);
            // spectrumProduct overwrites its first operand, so K and U take the products and DY is kept.
            spectrumProduct(ws, kr, ki, gr, gi, f, g, scale, true);
            spectrumProduct(ws, ur, ui, gr, gi, f, g, scale, true);
        }
        fft.transform(ws, kr, ki, true);
        fft.transform(ws, ur, ui, true);
        int ch = c.channels();
        boolean two = c0 + 1 < ch;
        for (int t = 0; t < len; t++) {
            int at = ogu + (base + t) * ch + c0;
            du[at] += ws[kr + t];
            int atk = ogk + t * ch + c0;
            dk[atk] += ws[ur + t];
            if (two) {
                du[at + 1] += ws[ki + t];
                dk[atk + 1] += ws[ui + t];
            }
        }
    }
}
