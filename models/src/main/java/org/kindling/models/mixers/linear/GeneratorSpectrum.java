package org.kindling.models.mixers.linear;

import org.kindling.models.nn.Activation;
import org.kindling.models.nn.Activations;
import org.kindling.models.nn.Init;
import org.kindling.models.nn.LayerContext;
import org.kindling.models.nn.ParamGroup;
import org.kindling.models.nn.Params;
import org.kindling.ops.Backend;
import org.kindling.ops.BinaryOp;
import org.kindling.ops.Gemm;
import org.kindling.ops.Tensor;
import org.kindling.ops.UnaryOp;

/**
 * Generated frequencies (the KL-Transformer's generator kernel): per head a two-layer network maps
 * the fixed noise ε ~ N(0, I) to ω = ε + W₂·tanh(W₁ε + b₁) + b₂, with HS hidden units. The paper's
 * generator has no skip and a tanh output; the skip with W₂ = 0, b₂ = 0 at the start (W₁ ~
 * N(0, 1/HS), b₁ = 0) makes the initial distribution exactly N(0, I) — the rks/prf kernel, as the
 * gmm kernels start — and lets training move it anywhere, where a tanh output would confine every
 * frequency to the unit cube. ε is the kernels' shared noise tensor, so a resumed run holds it bit
 * for bit.
 */
final class GeneratorSpectrum implements Spectrum {
    private final int heads;
    private final int headDim;
    private final int m;
    private final Params.Handle epsilon;
    private final Params.Handle w1;
    private final Params.Handle b1;
    private final Params.Handle w2;
    private final Params.Handle b2;
    private final Activations acts;
    /** [NH·M, HS] W₁ε + b₁, then read back for tanh′. */
    private final Activation hidden;
    /** [NH·M, HS] tanh of hidden. */
    private final Activation act;
    private final Activation dAct;
    private final Activation dHidden;

    GeneratorSpectrum(LayerContext ctx, int heads, int headDim, int m, Params.Handle epsilon) {
        this.heads = heads;
        this.headDim = headDim;
        this.m = m;
        this.epsilon = epsilon;
        w1 = ctx.params().add(ctx.child("generator_w1"), Init.normal(1 / Math.sqrt(headDim)), ParamGroup.NO_DECAY,
                heads * headDim, headDim);
        b1 = ctx.params().add(ctx.child("generator_b1"), Init.zeros(), ParamGroup.NO_DECAY, heads, headDim);
        w2 = ctx.params().add(ctx.child("generator_w2"), Init.zeros(), ParamGroup.NO_DECAY, heads * headDim, headDim);
        b2 = ctx.params().add(ctx.child("generator_b2"), Init.zeros(), ParamGroup.NO_DECAY, heads, headDim);
        acts = new Activations(ctx.device(), ctx.name(), ctx.step().workspace());
        hidden = acts.scratch("kernelized.gen_hidden");
        act = acts.scratch("kernelized.gen_act");
        dAct = acts.scratch("kernelized.gen_dact");
        dHidden = acts.scratch("kernelized.gen_dhidden");
    }

    /** Per head: C_h = op(A_h)·op(B_h) (+ C_h with beta 1), the heads' blocks {@code s*} elements apart. */
    private Gemm perHead(boolean ta, boolean tb, int rows, int cols, int inner, int ldc, long sa, long sb, long sc, float beta) {
        return Gemm.of(ta, tb, rows, cols, inner).leading(ta ? rows : inner, tb ? inner : cols, ldc)
                .scaled(1f, beta).strided(heads, sa, sb, sc);
    }

    @Override
    public void frequencies(Backend be, Tensor omega, int stride) {
        int hs = headDim;
        Tensor e = epsilon.value();
        Tensor z = hidden.write(heads * m, hs);
        be.gemm(perHead(false, true, m, hs, hs, hs, (long) m * hs, (long) hs * hs, (long) m * hs, 0f), z, e, w1.value());
        Tensor a = act.write(heads * m, hs);
        for (int h = 0; h < heads; h++) {
            Tensor zh = z.view(h * m * hs, m, hs);
            be.binary(BinaryOp.ADD, zh, zh, b1.value().view(h * hs, hs));
            be.copy(omega.view(h * stride * hs, m, hs), e.view(h * m * hs, m, hs));
        }
        be.unary(UnaryOp.TANH, a, z);
        be.gemm(perHead(false, true, m, hs, hs, hs, (long) m * hs, (long) hs * hs, (long) stride * hs, 1f), omega, a, w2.value());
        for (int h = 0; h < heads; h++) {
            Tensor oh = omega.view(h * stride * hs, m, hs);
            be.binary(BinaryOp.ADD, oh, oh, b2.value().view(h * hs, hs));
        }
    }

    @Override
    public void backward(Backend be, Tensor dOmega, int stride) {
        int hs = headDim;
        Tensor a = act.saved(heads * m, hs);
        Tensor z = hidden.saved(heads * m, hs);
        long sd = (long) stride * hs;
        for (int h = 0; h < heads; h++) {
            be.addColumnSums(b2.grad().view(h * hs, hs), dOmega.view(h * stride * hs, m, hs));
        }
        // dW₂ += dΩᵀ·a, da = dΩ·W₂ (per head)
        be.gemm(perHead(true, false, hs, hs, m, hs, sd, (long) m * hs, (long) hs * hs, 1f), w2.grad(), dOmega, a);
        Tensor da = dAct.write(heads * m, hs);
        be.gemm(perHead(false, false, m, hs, hs, hs, sd, (long) hs * hs, (long) m * hs, 0f), da, dOmega, w2.value());
        Tensor dz = dHidden.zeros(heads * m, hs);
        be.unaryBackward(UnaryOp.TANH, dz, da, z);
        for (int h = 0; h < heads; h++) {
            be.addColumnSums(b1.grad().view(h * hs, hs), dz.view(h * m * hs, m, hs));
        }
        // dW₁ += dzᵀ·ε
        be.gemm(perHead(true, false, hs, hs, m, hs, (long) m * hs, (long) m * hs, (long) hs * hs, 1f), w1.grad(), dz, epsilon.value());
    }

    @Override
    public void close() {
        acts.close();
    }
}
