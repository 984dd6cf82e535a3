package org.kindling.models.mixers.linear;

import java.util.SplittableRandom;
import org.kindling.models.nn.Activation;
import org.kindling.models.nn.Activations;
import org.kindling.models.nn.Init;
import org.kindling.models.nn.LayerContext;
import org.kindling.models.nn.ParamGroup;
import org.kindling.models.nn.Params;
import org.kindling.ops.Backend;
import org.kindling.ops.BinaryOp;
import org.kindling.ops.Gemm;
import org.kindling.ops.ReduceOp;
import org.kindling.ops.Seeds;
import org.kindling.ops.Tensor;

/**
 * FastFood frequencies (Le, Sarlós and Smola 2013), learned as in the KL-Transformer: per head,
 * blocks of D frequencies V = (1/√D)·S·H·G·Π·H·B, with H the D×D Walsh–Hadamard matrix, B random
 * signs, Π a random permutation, G a Gaussian diagonal and S a diagonal of chi(D)/|G| norms, so
 * each row of V is distributed in norm like a D-dimensional N(0, I) vector. D is HS rounded up to
 * a power of two (the transform needs one); x is padded with zeros, so only V's first HS columns
 * matter, and ω·x over those is the padded product. M frequencies take ⌈M/D⌉ blocks, the last one
 * cut. G and S train (the paper's learned FastFood: the Gaussian and the radial scale), B and Π stay
 * fixed, so a head learns 2·D parameters per block instead of D·HS.
 *
 * <p>The fixed part P = Π·H·B restricted to HS columns is a tensor ({@code fastfood_basis}, [NH·R,
 * HS], R = ⌈M/D⌉·D, saved with the weights) drawn from the model seed, the layer and the head, so a
 * resumed run holds it bit for bit. Ω = (1/√D)·S ⊙ H(G ⊙ P) is made once per step rather than
 * applied per token: the one remaining Hadamard transform of the HS columns is a fast
 * Walsh–Hadamard transform of log₂D butterfly stages (each one strided-batched 2×2 GEMM, so every
 * backend runs it), O(R·HS·log D) per head per step, independent of the token count; the tokens
 * then meet Ω in the same per-head GEMM as every other kernel.
 */
final class FastFoodSpectrum implements Spectrum {
    private final int heads;
    private final int headDim;
    private final int m;
    /** D: the transform's size, HS rounded up to a power of two. */
    private final int d;
    /** Frequencies drawn per head, ⌈M/D⌉·D. */
    private final int r;
    private final Params.Handle basis;
    private final Params.Handle gauss;
    private final Params.Handle radial;
    /** [2, 2] = [[1, 1], [1, −1]], the butterfly of one stage. */
    private final Tensor butterfly;
    private final Activations acts;
    private final Activation ping;
    private final Activation pong;
    private final Activation full;
    private final Activation sums;

    FastFoodSpectrum(LayerContext ctx, int heads, int headDim, int m) {
        this.heads = heads;
        this.headDim = headDim;
        this.m = m;
        this.d = Integer.bitCount(headDim) == 1 ? headDim : Integer.highestOneBit(headDim) << 1;
        this.r = (m + d - 1) / d * d;
        long seed = ctx.seed();
        int layer = ctx.layer();
        // The model's init stream is not used: the draw depends on (seed, layer, head) alone.
        basis = ctx.params().fixed(ctx.child("fastfood_basis"), (dst, off, shape, rnd) -> {
            for (int h = 0; h < heads; h++) {
                Draw w = draw(seed, layer, h);
                for (int i = 0; i < r; i++) {
                    int block = i / d;
                    int row = w.perm[i];
                    for (int j = 0; j < headDim; j++) {
                        dst[off + (h * r + i) * headDim + j] = Integer.bitCount(row & j) % 2 == 0 ? w.sign[block * d + j] : -w.sign[block * d + j];
                    }
                }
            }
        }, heads * r, headDim);
        gauss = ctx.params().add(ctx.child("fastfood_g"), (dst, off, shape, rnd) -> {
            for (int h = 0; h < heads; h++) {
                System.arraycopy(draw(seed, layer, h).g, 0, dst, off + h * r, r);
            }
        }, ParamGroup.NO_DECAY, heads * r);
        radial = ctx.params().add(ctx.child("fastfood_s"), (dst, off, shape, rnd) -> {
            for (int h = 0; h < heads; h++) {
                System.arraycopy(draw(seed, layer, h).s, 0, dst, off + h * r, r);
            }
        }, ParamGroup.NO_DECAY, heads * r);
        butterfly = ctx.device().fromFloats(new float[] {1f, 1f, 1f, -1f}, 2, 2);
        acts = new Activations(ctx.device(), ctx.name(), ctx.step().workspace());
        ping = acts.scratch("kernelized.ff_ping");
        pong = acts.scratch("kernelized.ff_pong");
        full = acts.scratch("kernelized.ff_full");
        sums = acts.scratch("kernelized.ff_sums");
    }

    /** One head's fixed signs and permutation (within each block) and its initial G and S. */
    private record Draw(float[] sign, int[] perm, float[] g, float[] s) {
    }

    private Draw draw(long seed, int layer, int h) {
        SplittableRandom rnd = new SplittableRandom(Seeds.derive(seed, layer, h));
        float[] sign = new float[r];
        int[] perm = new int[r];
        float[] g = new float[r];
        float[] s = new float[r];
        for (int b = 0; b < r; b += d) {
            for (int i = 0; i < d; i++) {
                sign[b + i] = rnd.nextBoolean() ? 1f : -1f;
                perm[b + i] = i;
            }
            for (int i = d - 1; i > 0; i--) {
                int j = rnd.nextInt(i + 1);
                int t = perm[b + i];
                perm[b + i] = perm[b + j];
                perm[b + j] = t;
            }
            double norm = 0;
            for (int i = 0; i < d; i++) {
                g[b + i] = (float) Init.gaussian(rnd);
                norm += (double) g[b + i] * g[b + i];
            }
            norm = Math.sqrt(norm);
            for (int i = 0; i < d; i++) {
                // A chi(D) draw: the norm of a D-dimensional N(0, I) vector.
                double chi = 0;
                for (int j = 0; j < d; j++) {
                    double z = Init.gaussian(rnd);
                    chi += z * z;
                }
                s[b + i] = (float) (Math.sqrt(chi) / norm);
            }
        }
        return new Draw(sign, perm, g, s);
    }

    @Override
    public void frequencies(Backend be, Tensor omega, int stride) {
        Tensor a = ping.write(heads * r, headDim);
        be.scaleRows(a, basis.value(), gauss.value());
        Tensor transformed = hadamard(be, a, pong.write(heads * r, headDim));
        Tensor f = full.write(heads * r, headDim);
        be.scaleRows(f, transformed, radial.value());
        be.affine(f, f, (float) (1 / Math.sqrt(d)), 0f);
        for (int h = 0; h < heads; h++) {
            be.copy(omega.view(h * stride * headDim, m, headDim), f.view(h * r * headDim, m, headDim));
        }
    }

    @Override
    public void backward(Backend be, Tensor dOmega, int stride) {
        float norm = (float) (1 / Math.sqrt(d));
        Tensor df = full.zeros(heads * r, headDim);
        for (int h = 0; h < heads; h++) {
            be.copy(df.view(h * r * headDim, m, headDim), dOmega.view(h * stride * headDim, m, headDim));
        }
        // H(G ⊙ P) from this step's frequencies: in ping after an even number of stages, else in pong.
        boolean even = Integer.numberOfTrailingZeros(d) % 2 == 0;
        Tensor transformed = (even ? ping : pong).saved(heads * r, headDim);
        Tensor other = (even ? pong : ping).write(heads * r, headDim);
        // dS_i = (1/√D)·Σ_j dΩ_ij·H(G ⊙ P)_ij
        be.binary(BinaryOp.MUL, other, df, transformed);
        addRowSums(be, radial.grad(), other, norm);
        // d(H(G ⊙ P)) = (1/√D)·S ⊙ dΩ, and H is symmetric: its backward is the same transform.
        be.scaleRows(other, df, radial.value());
        be.affine(other, other, norm, 0f);
        Tensor da = hadamard(be, other, transformed);
        Tensor spare = da == other ? transformed : other;
        // dG_i = Σ_j d(G ⊙ P)_ij·P_ij
        be.binary(BinaryOp.MUL, spare, da, basis.value());
        addRowSums(be, gauss.grad(), spare, 1f);
    }

    /** grad += scale·(row sums of x). */
    private void addRowSums(Backend be, Tensor grad, Tensor x, float scale) {
        Tensor s = sums.write(heads * r);
        be.reduceRows(ReduceOp.SUM, s, x);
        be.affine(s, s, scale, 0f);
        be.binary(BinaryOp.ADD, grad, grad, s);
    }

    /**
     * The Walsh–Hadamard transform of every D-row block of x [NH·R, HS] along its rows, ping-ponging
     * with y; returns whichever holds the result. Stage s pairs row i with row i + 2^s in each
     * 2^(s+1)-row group: one GEMM of the butterfly with every group as a [2, 2^s·HS] matrix.
     */
    private Tensor hadamard(Backend be, Tensor x, Tensor y) {
        Tensor src = x;
        Tensor dst = y;
        for (int half = 1; half < d; half *= 2) {
            long group = 2L * half * headDim;
            be.gemm(Gemm.of(false, false, 2, half * headDim, 2).leading(2, half * headDim, half * headDim)
                    .strided((int) (heads * r * headDim / group), 0, group, group), dst, butterfly, src);
            Tensor t = src;
            src = dst;
            dst = t;
        }
        return src;
    }

    @Override
    public void close() {
        acts.close();
        butterfly.close();
    }
}
