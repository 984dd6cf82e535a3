package org.kindling.ops.cpu;

import java.util.Arrays;
import java.util.concurrent.ConcurrentHashMap;
import org.jtransforms.fft.FloatFFT_1D;
import org.kindling.ops.CausalConv;
import org.kindling.ops.Tensor;
import org.kindling.ops.Varlen;
import pl.edu.icm.jlargearrays.ConcurrencyUtils;

/**
 * Causal long convolution on the CPU (FlashConv's idea without the GPU: the whole convolution of
 * one sequence and channel in one pass through a worker's scratch). Sequences of at most
 * {@link #DIRECT_MAX} tokens, and short kernels of at most {@link #DIRECT_TAPS} taps at any
 * length, are summed directly in double; the rest go through fp32 real FFTs (JTransforms) of the
 * next power of two ≥ 2·len − 1, with the kernel zero-padded past its taps, so the circular
 * convolution equals the causal one. Power-of-two sizes take JTransforms' in-place split-radix path, which allocates
 * nothing per call and measured faster than its mixed-radix sizes and than our own radix-2 FFT.
 *
 * <p>Parallelism: the forward runs one item per (sequence, block of channels); the backward one
 * per block of channels, walking the sequences in order, because dk sums over sequences and must
 * have a single writer. The direct sums run across a block's channels, which lie side by side in
 * memory (each channel's sum still in its own fixed order); the FFTs run channel by channel.
 * An item's arithmetic does not depend on the thread, so results are bit-identical for the same
 * inputs and any thread count. Scratch is allocated on the device.
 */
final class CpuCausalConv {
    /** Longest sequence summed directly: measured as fast as three FFTs of 2·len up to here, slower from 128. */
    static final int DIRECT_MAX = 96;
    /**
     * Most taps summed directly at any length. Both paths cost about the same per token whatever
     * the length (L multiply-adds against a few log n FFT stages), so the rule is on taps alone:
     * measured warm on one thread, 64 channels, forward + backward, direct vs FFT at 1025 tokens
     * 10.4 vs 11.9 ms for 48 taps and 15.6 vs 11.6 ms for 64; at 4097 tokens 42 vs 55 and 61 vs 54.
     */
    static final int DIRECT_TAPS = 48;

    static {
        // JTransforms splits large transforms over a global pool of its own; each of our threads
        // already runs whole transforms, and one thread per transform keeps the result bit-identical.
        ConcurrencyUtils.setNumberOfThreads(1);
    }

    private final CpuDevice device;
    private final CpuPool pool;
    /** One plan (twiddles, bit-reversal table) per size; the power-of-two transforms only read it. */
    private final ConcurrentHashMap<Integer, FloatFFT_1D> plans = new ConcurrentHashMap<>();

    CpuCausalConv(CpuDevice device, CpuPool pool) {
        this.device = device;
        this.pool = pool;
    }

    private static float[] f(Tensor t, String what) {
        if (!(t.storage() instanceof CpuStorage s)) {
            throw new IllegalArgumentException("causal conv " + what + " is not on the CPU: " + t);
        }
        return s.floats();
    }

    /** The smallest power of two ≥ 2·len − 1: a linear convolution of two len-long signals fits without wrapping. */
    static int fftSize(int len) {
        return Integer.highestOneBit(Math.max(1, 2 * len - 2)) << 1;
    }

    FloatFFT_1D plan(int n) {
        return plans.computeIfAbsent(n, FloatFFT_1D::new);
    }

    /** Whether a sequence of len tokens convolved with taps taps is summed directly rather than by FFT. */
    static boolean direct(int len, int taps) {
        return len <= DIRECT_MAX || taps <= DIRECT_TAPS;
    }

    /** Floats of scratch a worker needs: {@code buffers} transforms of the longest sequence, if any takes the FFT. */
    private static int scratch(CausalConv c, int buffers) {
        int n = 1;
        for (int s = 0; s < c.sequences(); s++) {
            if (!direct(c.length(s), c.taps(s))) {
                n = Math.max(n, buffers * fftSize(c.length(s)));
            }
        }
        return n;
    }

    /** Loads rows [row0, row0 + len) of channel ch of a [rows, C] array into ws[at, at + n), zero-padded. */
    static void gather(float[] src, int off, int row0, int len, int ch, int channels, float[] ws, int at, int n) {
        for (int t = 0; t < len; t++) {
            ws[at + t] = src[off + (row0 + t) * channels + ch];
        }
        Arrays.fill(ws, at + len, at + n, 0f);
    }

    /**
     * ws[a..a+n) ← a·b (conj(a)·b when {@code conj}) bin by bin, times scale, over JTransforms'
     * packed real spectrum of even n: [Re₀, Re_{n/2}, Re₁, Im₁, …].
     */
    static void multiply(float[] ws, int a, int b, int n, boolean conj, float scale) {
        ws[a] *= ws[b] * scale;
        ws[a + 1] *= ws[b + 1] * scale;
        float sign = conj ? -1f : 1f;
        for (int m = 2; m < n; m += 2) {
            float ar = ws[a + m];
            float ai = sign * ws[a + m + 1];
            float br = ws[b + m];
            float bi = ws[b + m + 1];
            ws[a + m] = (ar * br - ai * bi) * scale;
            ws[a + m + 1] = (ar * bi + ai * br) * scale;
        }
    }

    /** Channels per work item: the direct sums run across a block's channels, which lie side by side in memory. */
    static final int CHANNEL_BLOCK = 16;

    // ---- forward ----

    void forward(Tensor y, Tensor u, Tensor k, Varlen cuSeqlens) {
        CausalConv c = CausalConv.check(y, u, k, cuSeqlens);
        float[] yv = f(y, "y");
        float[] uv = f(u, "u");
        float[] kv = f(k, "k");
        int ch = c.channels();
        int blocks = (ch + CHANNEL_BLOCK - 1) / CHANNEL_BLOCK;
        pool.runItems(device, c.sequences() * blocks, scratch(c, 2), (it, ws, w) -> {
            int s = it / blocks;
            int c0 = (it % blocks) * CHANNEL_BLOCK;
            int c1 = Math.min(ch, c0 + CHANNEL_BLOCK);
            int base = c.cu()[s];
            int len = c.length(s);
            int taps = c.taps(s);
            if (direct(len, taps)) {
                // y[t, c] = Σ_j k[j, c]·u[t − j, c] in double, j ascending, for the block's channels at once.
                double[] acc = new double[c1 - c0];
                for (int t = 0; t < len; t++) {
                    Arrays.fill(acc, 0);
                    for (int j = 0; j <= Math.min(t, taps - 1); j++) {
                        int ko = k.offset() + j * ch;
                        int uo = u.offset() + (base + t - j) * ch;
                        for (int cc = c0; cc < c1; cc++) {
                            acc[cc - c0] += (double) kv[ko + cc] * uv[uo + cc];
                        }
                    }
                    int yo = y.offset() + (base + t) * ch;
                    for (int cc = c0; cc < c1; cc++) {
                        yv[yo + cc] = (float) acc[cc - c0];
                    }
                }
                return;
            }
            int n = fftSize(len);
            FloatFFT_1D fft = plan(n);
            int kb = w + n;
            for (int cc = c0; cc < c1; cc++) {
                gather(uv, u.offset(), base, len, cc, ch, ws, w, n);
                gather(kv, k.offset(), 0, taps, cc, ch, ws, kb, n);
                fft.realForward(ws, w);
                fft.realForward(ws, kb);
                // The unscaled inverse returns n/2 times the signal; 2/n is a power of two, so exact.
                multiply(ws, w, kb, n, false, 2f / n);
                fft.realInverse(ws, w, false);
                for (int t = 0; t < len; t++) {
                    yv[y.offset() + (base + t) * ch + cc] = ws[w + t];
                }
            }
        });
    }

    // ---- backward ----

    void backward(Tensor du, Tensor dk, Tensor dy, Tensor u, Tensor k, Varlen cuSeqlens) {
        CausalConv c = CausalConv.checkBackward(du, dk, dy, u, k, cuSeqlens);
        float[] duv = f(du, "du");
        float[] dkv = f(dk, "dk");
        float[] gv = f(dy, "dy");
        float[] uv = f(u, "u");
        float[] kv = f(k, "k");
        int ch = c.channels();
        // dk sums over sequences, so a block of channels walks them all in order: its one writer.
        int cb = Math.max(1, Math.min(CHANNEL_BLOCK, ch / (4 * pool.threads())));
        int blocks = (ch + cb - 1) / cb;
        pool.runItems(device, blocks, scratch(c, 3), (b, ws, w) -> {
            int c0 = b * cb;
            int c1 = Math.min(ch, c0 + cb);
            int width = c1 - c0;
            double[] acc = new double[width];
            double[] dkAcc = new double[Math.min(c.kernelLength(), c.maxLength()) * width];
            for (int s = 0; s < c.sequences(); s++) {
                int base = c.cu()[s];
                int len = c.length(s);
                int taps = c.taps(s);
                if (direct(len, taps)) {
                    // du[t, c] += Σ_{q ≥ t} k[q − t, c]·dy[q, c], q ascending.
                    for (int t = 0; t < len; t++) {
                        Arrays.fill(acc, 0);
                        for (int q = t; q < Math.min(len, t + taps); q++) {
                            int ko = k.offset() + (q - t) * ch;
                            int go = dy.offset() + (base + q) * ch;
                            for (int cc = c0; cc < c1; cc++) {
                                acc[cc - c0] += (double) kv[ko + cc] * gv[go + cc];
                            }
                        }
                        int o = du.offset() + (base + t) * ch;
                        for (int cc = c0; cc < c1; cc++) {
                            duv[o + cc] += (float) acc[cc - c0];
                        }
                    }
                    // dk[j, c] += Σ_q u[q − j, c]·dy[q, c]: one pass over the tokens, each tap's sum in token order.
                    Arrays.fill(dkAcc, 0, taps * width, 0);
                    for (int q = 0; q < len; q++) {
                        int go = dy.offset() + (base + q) * ch;
                        for (int j = 0; j <= Math.min(q, taps - 1); j++) {
                            int uo = u.offset() + (base + q - j) * ch;
                            for (int cc = c0; cc < c1; cc++) {
                                dkAcc[j * width + cc - c0] += uv[uo + cc] * (double) gv[go + cc];
                            }
                        }
                    }
                    for (int j = 0; j < taps; j++) {
                        for (int cc = c0; cc < c1; cc++) {
                            dkv[dk.offset() + j * ch + cc] += (float) dkAcc[j * width + cc - c0];
                        }
                    }
                    continue;
                }
                int n = fftSize(len);
                FloatFFT_1D fft = plan(n);
                int kb = w + n;
                int ub = w + 2 * n;
                for (int cc = c0; cc < c1; cc++) {
                    gather(gv, dy.offset(), base, len, cc, ch, ws, w, n);
                    gather(kv, k.offset(), 0, taps, cc, ch, ws, kb, n);
                    gather(uv, u.offset(), base, len, cc, ch, ws, ub, n);
                    fft.realForward(ws, w);
                    fft.realForward(ws, kb);
                    fft.realForward(ws, ub);
                    // du = dy ⋆ k and dk = dy ⋆ u (correlations: conj(K)·DY, conj(U)·DY); negative lags
                    // wrap to indices ≥ len, which are not read.
                    multiply(ws, kb, w, n, true, 2f / n);
                    multiply(ws, ub, w, n, true, 2f / n);
                    fft.realInverse(ws, kb, false);
                    fft.realInverse(ws, ub, false);
                    for (int t = 0; t < len; t++) {
                        duv[du.offset() + (base + t) * ch + cc] += ws[kb + t];
                    }
                    for (int j = 0; j < taps; j++) {
                        dkv[dk.offset() + j * ch + cc] += ws[ub + j];
                    }
                }
            }
        });
    }
}
