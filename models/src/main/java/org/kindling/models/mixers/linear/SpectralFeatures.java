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
import org.kindling.ops.Device;
import org.kindling.ops.Gemm;
import org.kindling.ops.ReduceOp;
import org.kindling.ops.Seeds;
import org.kindling.ops.Tensor;
import org.kindling.ops.UnaryOp;

/**
 * Random Fourier features of a spectral distribution (KL-Transformer, Chowdhury et al. 2021), per
 * head, on x scaled by HS^(−1/4) as FAVOR+ scales it. Head h draws its K = C·M frequencies from C
 * mixture components of M each: ω_{c,i} = μ_c + exp(σ_c/2)⊙ε_{c,i}, with ε [NH·K, HS] fixed
 * N(0, I) noise from {@code Seeds.derive(seed, layer, h)} (saved with the weights, so a resumed run
 * holds it bit for bit). The gmm kernels learn μ, σ (the log-variance) and the mixture logits π;
 * rks and prf keep C = 1, μ = 0, σ = 0: the Gaussian kernel, resp. softmax's exp(q·k). The
 * fastfood and generator kernels (C = 1) make their M frequencies otherwise — a learned FastFood
 * product ({@link FastFoodSpectrum}) or a generator network of ε ({@link GeneratorSpectrum}) — and
 * start at the rks/prf distribution; the features below are the same for every kernel.
 * <ul>
 * <li>RKS: trigonometric features estimate k(δ) = Σ_c π_c·exp(−½δᵀΣ_cδ)·cos(μ_cᵀδ) (the Gaussian
 * kernel for rks) as Σ_c π_c·(1/M)Σ_i cos ω_{c,i}(q − k), but cosines and sines can be negative,
 * while the linear-attention core divides by φ(q)·Σφ(k) and requires φ ≥ 0. Each frequency
 * therefore gives four non-negative features √(π_c/(2M))·[1 + cos θ, 1 − cos θ, 1 + sin θ,
 * 1 − sin θ] (θ = ω_{c,i}x), whose products sum to (π_c/M)·(2 + cos(θ_q − θ_k)): φ(q)·φ(k)
 * estimates 2 + k(δ), a shift of the kernel by a constant (still positive definite). The shift is
 * what non-negative features cost: attention weights lie in [1, 3] instead of [−1, 1], so RKS
 * attends less sharply than PRF. The sine is the cosine at a −π/2 phase, so all four blocks come
 * from one GEMM against [Ω; Ω; Ω; Ω].</li>
 * <li>PRF: φ(x) = √(π_c/M)·exp(ω_{c,i}x − |x|²/2), positive everywhere; for ω ~ N(0, I) an
 * unbiased estimate of exp(q·k) (FAVOR+'s estimator with i.i.d. rather than orthogonal rows).
 * No stabiliser: the exponent is at most |ω|²/2 (see {@code Backend.favorFeatures}).</li>
 * </ul>
 * Everything is composed from existing kernels (per-head GEMMs on the interleaved head columns,
 * elementwise maps, column sums), so every backend runs it; ε is frozen, μ, σ and π get gradients.
 */
final class SpectralFeatures implements FeatureMap {
    private final KernelizedSpec.Kernel kernel;
    private final int heads;
    private final int headDim;
    private final int m;
    private final int comps;
    /** Frequencies per head, C·M. */
    private final int k;
    /** Features per head: 4K for RKS (1 ± cos, 1 ± sin), K for PRF. */
    private final int rows;
    private final float scale;
    private final Params.Handle epsilon;
    private final Params.Handle mu;
    private final Params.Handle logVar;
    private final Params.Handle mix;
    /** FastFood or generator frequencies; null for the fixed and mixture kernels. */
    private final Spectrum spectrum;
    /** rks and prf: [1, NH·rows], each feature's fixed scale (the gmm kernels' scales follow π). */
    private final Tensor base;
    /** RKS: [1, NH·rows] phases, 0 on the cosine blocks, −π/2 on the sine blocks. */
    private final Tensor phase;
    /** RKS: [1, NH·rows] signs, +1 on the 1 + cos and 1 + sin blocks, −1 on the others. */
    private final Tensor sign;
    /** gmm: [NH·C, NH·rows], 1 where feature j belongs to component c, so that scales = √(π/M)·E. */
    private final Tensor expand;
    /** PRF: [1, rows] of ones, the outer product that spreads −|x|²/2 over a head's features. */
    private final Tensor ones;
    private final Activations acts;
    private final Activation omega;
    private final Activation featureScale;
    private final Activation std;
    private final Activation prob;
    private final Activation rootProb;
    private final Activation pre;
    private final Activation dpre;
    private final Activation upstream;
    private final Activation norms;
    private final Activation dOmega;
    private final Activation dScale;
    private final Activation dRoot;
    private final Activation dLogVar;

    SpectralFeatures(LayerContext ctx, int heads, int headDim, KernelizedSpec.Kernel kernel, int m, int comps) {
        this.kernel = kernel;
        this.heads = heads;
        this.headDim = headDim;
        this.m = m;
        this.comps = comps;
        this.k = comps * m;
        this.rows = kernel.positive ? k : 4 * k;
        this.scale = (float) Math.pow(headDim, -0.25);
        long seed = ctx.seed();
        int layer = ctx.layer();
        int perHead = k * headDim;
        // The model's init stream is not used: ε depends on (seed, layer, head) alone.
        Init noise = (dst, off, shape, rnd) -> {
            for (int h = 0; h < heads; h++) {
                SplittableRandom r = new SplittableRandom(Seeds.derive(seed, layer, h));
                for (int i = 0; i < perHead; i++) {
                    dst[off + h * perHead + i] = (float) Init.gaussian(r);
                }
            }
        };
        // FastFood draws its own structured noise; every other kernel transforms ε.
        this.epsilon = kernel.family == KernelizedSpec.Family.FASTFOOD ? null
                : ctx.params().fixed(ctx.child("epsilon"), noise, heads * k, headDim);
        this.spectrum = switch (kernel.family) {
            case FASTFOOD -> new FastFoodSpectrum(ctx, heads, headDim, m);
            case GENERATOR -> new GeneratorSpectrum(ctx, heads, headDim, m, epsilon);
            case FIXED, GMM -> null;
        };
        if (kernel.mixture) {
            // Every component starts as N(0, I) with equal weight: the fixed kernel, which training then moves.
            mu = ctx.params().add(ctx.child("mu"), Init.zeros(), ParamGroup.NO_DECAY, heads * comps, headDim);
            logVar = ctx.params().add(ctx.child("log_var"), Init.zeros(), ParamGroup.NO_DECAY, heads * comps, headDim);
            mix = ctx.params().add(ctx.child("mix"), Init.zeros(), ParamGroup.NO_DECAY, heads, comps);
        } else {
            mu = null;
            logVar = null;
            mix = null;
        }
        Device dev = ctx.device();
        int width = heads * rows;
        float[] b = new float[width];
        float[] p = new float[width];
        float[] sg = new float[width];
        float[] e = kernel.mixture ? new float[heads * comps * width] : null;
        float fixedScale = (float) (1 / Math.sqrt(share()));
        for (int h = 0; h < heads; h++) {
            for (int j = 0; j < rows; j++) {
                int col = h * rows + j;
                int blockOf = j / k;
                b[col] = fixedScale;
                p[col] = blockOf >= 2 ? (float) (-Math.PI / 2) : 0f;
                sg[col] = blockOf % 2 == 0 ? 1f : -1f;
                if (e != null) {
                    e[(h * comps + (j % k) / m) * width + col] = 1f;
                }
            }
        }
        this.base = kernel.mixture ? null : dev.fromFloats(b, 1, width);
        this.phase = kernel.positive ? null : dev.fromFloats(p, 1, width);
        this.sign = kernel.positive ? null : dev.fromFloats(sg, 1, width);
        this.expand = e == null ? null : dev.fromFloats(e, heads * comps, width);
        this.ones = kernel.positive ? dev.fromFloats(filled(rows), 1, rows) : null;
        this.acts = new Activations(dev, ctx.name(), ctx.step().workspace());
        omega = acts.scratch("kernelized.omega");
        featureScale = acts.scratch("kernelized.scale");
        std = acts.scratch("kernelized.std");
        prob = acts.scratch("kernelized.prob");
        rootProb = acts.scratch("kernelized.root_prob");
        pre = acts.scratch("kernelized.pre");
        dpre = acts.scratch("kernelized.dpre");
        upstream = acts.scratch("kernelized.upstream");
        norms = acts.scratch("kernelized.norms");
        dOmega = acts.scratch("kernelized.domega");
        dScale = acts.scratch("kernelized.dscale");
        dRoot = acts.scratch("kernelized.droot");
        dLogVar = acts.scratch("kernelized.dlog_var");
    }

    private static float[] filled(int n) {
        float[] f = new float[n];
        java.util.Arrays.fill(f, 1f);
        return f;
    }

    @Override
    public int features() {
        return rows;
    }

    @Override
    public void forward(Tensor phi, Tensor x, boolean query) {
        Backend be = x.device().backend();
        be.affine(x, x, scale, 0f);
        Tensor om = buildOmega(be);
        Tensor a = buildScale(be);
        preActivation(be, phi, x, om);
        if (kernel.positive) {
            be.unary(UnaryOp.EXP, phi, phi);
        } else {
            onePlusSignedCos(be, phi);
        }
        be.binary(BinaryOp.MUL, phi, phi, a);
    }

    @Override
    public void backward(Tensor dx, Tensor dphi, Tensor phi, Tensor x, boolean query) {
        Backend be = x.device().backend();
        int t = x.rows();
        int width = heads * rows;
        Tensor om = buildOmega(be);
        Tensor a = buildScale(be);
        Tensor dz;
        Tensor z = null;
        if (kernel.positive) {
            dz = dpre.write(t, width);
            be.binary(BinaryOp.MUL, dz, dphi, phi);
            if (kernel.mixture) {
                z = pre.write(t, width);
                preActivation(be, z, x, om);
                be.unary(UnaryOp.EXP, z, z);
            }
        } else {
            z = pre.write(t, width);
            preActivation(be, z, x, om);
            Tensor g = upstream.write(t, width);
            be.binary(BinaryOp.MUL, g, dphi, a);
            be.binary(BinaryOp.MUL, g, g, sign);
            dz = dpre.zeros(t, width);
            be.unaryBackward(UnaryOp.COS, dz, g, z);
            onePlusSignedCos(be, z);
        }
        float beta = 0f;
        if (kernel.positive) {
            // −|x_h|²/2 in every exponent of head h: dx_h −= (Σ_i dz_{h,i})·x_h.
            Tensor sums = norms.write(t * heads);
            be.reduceRows(ReduceOp.SUM, sums, dz.reshape(t * heads, rows));
            Tensor dxh = dx.reshape(t * heads, headDim);
            be.scaleRows(dxh, x.reshape(t * heads, headDim), sums);
            be.affine(dx, dx, -1f, 0f);
            beta = 1f;
        }
        perHead(be, Gemm.of(false, false, t, headDim, rows).leading(width, headDim, heads * headDim).scaled(1f, beta),
                dx, headDim, dz, rows, om, rows * headDim);
        be.affine(dx, dx, scale, 0f);
        if (kernel.mixture) {
            // z now holds the feature before its scale (1 ± cos z or exp z): scale gradients are Σ_t dφ·z.
            be.binary(BinaryOp.MUL, z, z, dphi);
            mixtureSpectralGradients(be, frequencyGradient(be, dz, x));
            mixtureGradients(be, z);
        } else if (spectrum != null) {
            spectrum.backward(be, frequencyGradient(be, dz, x), rows);
        }
    }

    /** Ω [NH·rows, HS]: per head the K frequencies, for RKS four times over. */
    private Tensor buildOmega(Backend be) {
        Tensor om = omega.write(heads * rows, headDim);
        if (spectrum != null) {
            spectrum.frequencies(be, om, rows);
        } else if (kernel.mixture) {
            Tensor e = epsilon.value();
            Tensor s = std.write(heads * comps, headDim);
            be.affine(s, logVar.value(), 0.5f, 0f);
            be.unary(UnaryOp.EXP, s, s);
            Tensor mv = mu.value();
            for (int h = 0; h < heads; h++) {
                for (int c = 0; c < comps; c++) {
                    Tensor target = om.view((h * rows + c * m) * headDim, m, headDim);
                    int p = (h * comps + c) * headDim;
                    be.binary(BinaryOp.MUL, target, e.view((h * k + c * m) * headDim, m, headDim), s.view(p, headDim));
                    be.binary(BinaryOp.ADD, target, target, mv.view(p, headDim));
                }
            }
        } else {
            Tensor e = epsilon.value();
            for (int h = 0; h < heads; h++) {
                be.copy(om.view(h * rows * headDim, k, headDim), e.view(h * k * headDim, k, headDim));
            }
        }
        if (!kernel.positive) {
            for (int h = 0; h < heads; h++) {
                for (int block = 1; block < 4; block++) {
                    be.copy(om.view((h * rows + block * k) * headDim, k, headDim), om.view(h * rows * headDim, k, headDim));
                }
            }
        }
        return om;
    }

    /** z = 1 ± cos z in place, the sign per block. */
    private void onePlusSignedCos(Backend be, Tensor z) {
        be.unary(UnaryOp.COS, z, z);
        be.binary(BinaryOp.MUL, z, z, sign);
        be.affine(z, z, 1f, 1f);
    }

    /** The features' scales [1, NH·rows]: √(softmax(π)_c/M) per component for PRF, √(softmax(π)_c/(2M)) for RKS. */
    private Tensor buildScale(Backend be) {
        if (!kernel.mixture) {
            return base;
        }
        Tensor p = prob.write(heads, comps);
        be.softmaxForward(p, mix.value());
        Tensor sp = rootProb.write(1, heads * comps);
        be.affine(sp, p, 1f / share(), 0f);
        be.unary(UnaryOp.SQRT, sp, sp);
        Tensor a = featureScale.write(1, heads * rows);
        be.gemm(Gemm.of(false, false, 1, heads * rows, heads * comps), a, sp, expand);
        return a;
    }

    /** out [T, NH·rows] = ω·x per head, plus the phase (RKS) or −|x_h|²/2 (PRF). */
    private void preActivation(Backend be, Tensor out, Tensor x, Tensor om) {
        int t = x.rows();
        float beta = 0f;
        if (kernel.positive) {
            Tensor sq = upstream.write(t * heads, headDim);
            be.unary(UnaryOp.SQUARE, sq, x.reshape(t * heads, headDim));
            Tensor n = norms.write(t * heads, 1);
            be.reduceRows(ReduceOp.SUM, n.reshape(t * heads), sq);
            be.affine(n, n, -0.5f, 0f);
            be.gemm(Gemm.of(false, false, t * heads, rows, 1), out.reshape(t * heads, rows), n, ones);
            beta = 1f;
        }
        perHead(be, Gemm.of(false, true, t, rows, headDim).leading(heads * headDim, headDim, heads * rows).scaled(1f, beta),
                out, rows, x, headDim, om, rows * headDim);
        if (!kernel.positive) {
            be.binary(BinaryOp.ADD, out, out, phase);
        }
    }

    /**
     * dΩ [NH·rows, HS] from dz [T, NH·rows] and the scaled x: dΩ_h = dz_hᵀ·x_h, the RKS blocks
     * summed into each head's first K rows, where the frequencies' gradient is.
     */
    private Tensor frequencyGradient(Backend be, Tensor dz, Tensor x) {
        int t = x.rows();
        Tensor dom = dOmega.write(heads * rows, headDim);
        perHead(be, Gemm.of(true, false, rows, headDim, t).leading(heads * rows, heads * headDim, headDim),
                dom, rows * headDim, dz, rows, x, headDim);
        if (!kernel.positive) {
            for (int h = 0; h < heads; h++) {
                Tensor first = dom.view(h * rows * headDim, k, headDim);
                for (int block = 1; block < 4; block++) {
                    be.binary(BinaryOp.ADD, first, first, dom.view((h * rows + block * k) * headDim, k, headDim));
                }
            }
        }
        return dom;
    }

    /** μ and σ gradients from dΩ: per component dμ_c = Σ_i dω_{c,i} and dσ_c = ½·exp(σ_c/2)⊙Σ_i dω_{c,i}⊙ε_{c,i}. */
    private void mixtureSpectralGradients(Backend be, Tensor dom) {
        Tensor e = epsilon.value();
        Tensor r = dLogVar.zeros(heads * comps, headDim);
        Tensor dmu = mu.grad();
        for (int h = 0; h < heads; h++) {
            for (int c = 0; c < comps; c++) {
                Tensor d = dom.view((h * rows + c * m) * headDim, m, headDim);
                int p = (h * comps + c) * headDim;
                be.addColumnSums(dmu.view(p, headDim), d);
                be.binary(BinaryOp.MUL, d, d, e.view((h * k + c * m) * headDim, m, headDim));
                be.addColumnSums(r.view(p, headDim), d);
            }
        }
        // std still holds exp(σ/2) from this call's buildOmega.
        be.binary(BinaryOp.MUL, r, r, std.saved(heads * comps, headDim));
        be.affine(r, r, 0.5f, 0f);
        Tensor dlv = logVar.grad();
        be.binary(BinaryOp.ADD, dlv, dlv, r);
    }

    /** The divisor S in a feature's scale √(π_c/S): M terms per component, each RKS term split in two pairs. */
    private float share() {
        return kernel.positive ? m : 2f * m;
    }

    /** π's gradient from scaled [T, NH·rows] = dφ ⊙ (feature before its scale), through √(p/M) and the softmax. */
    private void mixtureGradients(Backend be, Tensor scaled) {
        Tensor da = dScale.zeros(1, heads * rows);
        be.addColumnSums(da.reshape(heads * rows), scaled);
        Tensor dsp = dRoot.write(1, heads * comps);
        be.gemm(Gemm.of(false, true, 1, heads * comps, heads * rows), dsp, da, expand);
        // d√(p/S)/dp = 1/(2S·√(p/S)), S = M (PRF) or 2M (RKS)
        be.binary(BinaryOp.DIV, dsp, dsp, rootProb.saved(1, heads * comps));
        be.affine(dsp, dsp, 0.5f / share(), 0f);
        be.softmaxBackward(mix.grad(), dsp.reshape(heads, comps), prob.saved(heads, comps));
    }

    /**
     * One GEMM per head, each operand's block starting {@code h·step} elements into it and read at
     * the layout's leading dimensions: heads interleave in the columns of q, k and φ, so one strided
     * batch would need overlapping C matrices, which {@link Gemm} refuses.
     */
    private void perHead(Backend be, Gemm g, Tensor c, int cStep, Tensor a, int aStep, Tensor b, int bStep) {
        int sc = (int) g.spanC();
        int sa = (int) g.spanA();
        int sb = (int) g.spanB();
        for (int h = 0; h < heads; h++) {
            be.gemm(g, c.view(h * cStep, sc), a.view(h * aStep, sa), b.view(h * bStep, sb));
        }
    }

    @Override
    public void close() {
        acts.close();
        if (spectrum != null) {
            spectrum.close();
        }
        if (base != null) {
            base.close();
        }
        if (phase != null) {
            phase.close();
            sign.close();
        }
        if (expand != null) {
            expand.close();
        }
        if (ones != null) {
            ones.close();
        }
    }
}
