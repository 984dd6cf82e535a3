package org.kindling.models.mixers.ssm;

import org.kindling.models.nn.Activation;
import org.kindling.models.nn.Activations;
import org.kindling.models.nn.Init;
import org.kindling.models.nn.LayerContext;
import org.kindling.models.nn.ParamGroup;
import org.kindling.models.nn.Params;
import org.kindling.ops.Backend;
import org.kindling.ops.BinaryOp;
import org.kindling.ops.Tensor;
import org.kindling.ops.Varlen;

/**
 * The diagonal state-space layer of S4D and of H3's second SSM with its skip: y = SSM(u) + D⊙u
 * over W channels (see {@link org.kindling.ops.Ssm} for the parameterisation: B = 1, zero-order
 * hold). logDt, aRe and aIm are the dynamics: S4 trains them slower and without weight decay, so
 * they sit in their own {@link ParamGroup}; C̃ is a weight like any other, D a per-channel gain
 * (not decayed, like a bias). NM = d_state/2 complex modes per channel, conjugate pairs implied.
 */
final class DiagonalSsm implements AutoCloseable {
    final int width;
    final int modes;
    final int block;
    /** logDt [W], aRe and aIm [W, NM], c [W, NM, 2], d [W]. */
    final Params.Handle logDt;
    final Params.Handle aRe;
    final Params.Handle aIm;
    final Params.Handle c;
    final Params.Handle d;
    private final Activations acts;
    /** Scratch [T, W]: D⊙u in the forward, dy⊙u and dy⊙D in the backward. */
    private final Activation prod;
    /** Decoding's own scratch [R, W], so a pending backward stays intact. */
    private final Activation stepProd;

    /**
     * @param prefix parameter-name prefix inside the layer ({@code ""} or e.g. {@code "ssm."})
     * @param dState state size N = 2·NM (real dimensions, as the papers count it)
     * @param inverse S4D-Inv instead of S4D-Lin for Im A
     */
    DiagonalSsm(LayerContext ctx, String prefix, int width, int dState, boolean inverse, double dtMin, double dtMax,
                double dynamicsLr, int block) {
        this.width = width;
        this.modes = dState / 2;
        this.block = block;
        ParamGroup dynamics = new ParamGroup(false, dynamicsLr);
        Params.Builder pb = ctx.params();
        logDt = pb.add(ctx.child(prefix + "log_dt"), logDtInit(dtMin, dtMax), dynamics, width);
        // Re A = −exp(aRe) = −1/2 for every mode, in both S4D initialisations.
        aRe = pb.add(ctx.child(prefix + "a_re"), Init.constant(Math.log(0.5)), dynamics, width, modes);
        aIm = pb.add(ctx.child(prefix + "a_im"), imagInit(dState, inverse), dynamics, width, modes);
        // Complex standard normal C̃: variance 1/2 in each part, as torch.randn(cfloat) draws it.
        c = pb.add(ctx.child(prefix + "c"), Init.normal(Math.sqrt(0.5)), ParamGroup.DECAY, width, modes, 2);
        d = pb.add(ctx.child(prefix + "d"), Init.normal(1.0), ParamGroup.NO_DECAY, width);
        acts = new Activations(ctx.device(), ctx.child(prefix + "skip"), ctx.step().workspace());
        prod = acts.f32("prod");
        stepProd = acts.f32("step_prod");
    }

    /** log dt ~ U[log dtMin, log dtMax), one per channel. */
    static Init logDtInit(double dtMin, double dtMax) {
        return Init.uniform(Math.log(dtMin), Math.log(dtMax));
    }

    /**
     * Im A_n for n = 0 … N/2 − 1 of state size N, the same for every channel: S4D-Lin π·n, or
     * S4D-Inv (N/π)·(N/(2n+1) − 1), with N the real state size as in the paper and its code.
     */
    static Init imagInit(int dState, boolean inverse) {
        return (dst, off, shape, rnd) -> {
            int m = shape[1];
            for (int ch = 0; ch < shape[0]; ch++) {
                for (int n = 0; n < m; n++) {
                    dst[off + ch * m + n] = (float) imag(dState, n, inverse);
                }
            }
        };
    }

    static double imag(int dState, int n, boolean inverse) {
        return inverse ? dState / Math.PI * (dState / (2.0 * n + 1) - 1) : Math.PI * n;
    }

    /** y[T, W] = SSM(u) + D⊙u within each sequence of {@code cuSeqlens}; y must not overlap u. */
    void forward(Tensor y, Tensor u, Varlen cuSeqlens) {
        Backend be = y.device().backend();
        be.ssmConvForward(y, u, logDt.value(), aRe.value(), aIm.value(), c.value(), cuSeqlens, block);
        skipForward(be, y, u, d.value(), prod.write(u.rows(), width));
    }

    /** du += ∂L/∂u for upstream dy; parameter gradients +=. u is the forward's input. */
    void backward(Tensor du, Tensor dy, Tensor u, Varlen cuSeqlens) {
        Backend be = dy.device().backend();
        be.ssmConvBackward(du, logDt.grad(), aRe.grad(), aIm.grad(), c.grad(), dy, u, logDt.value(), aRe.value(),
                aIm.value(), c.value(), cuSeqlens, block);
        skipBackward(be, du, d.grad(), dy, u, d.value(), prod.write(u.rows(), width));
    }

    /** The state of one sequence for {@link #step}: [W, NM, 2] complex x, zero at its start. */
    int[] stateShape() {
        return new int[] {width, modes, 2};
    }

    /** y[t, W] for the next t tokens u[t, W] of one sequence, advancing its state. */
    void step(Tensor y, Tensor state, Tensor u) {
        Backend be = y.device().backend();
        be.ssmStep(y, state, u, logDt.value(), aRe.value(), aIm.value(), c.value());
        skipForward(be, y, u, d.value(), stepProd.write(u.rows(), width));
    }

    /** The skip term of an SSM: y[T, W] += D⊙u for a per-channel gain D [W], through the scratch p [T, W]. */
    static void skipForward(Backend be, Tensor y, Tensor u, Tensor gain, Tensor p) {
        be.binary(BinaryOp.MUL, p, u, gain);
        be.binary(BinaryOp.ADD, y, y, p);
    }

    /** The gradients of {@link #skipForward}: dgain += Σ_t dy⊙u, du += dy⊙D. */
    static void skipBackward(Backend be, Tensor du, Tensor dgain, Tensor dy, Tensor u, Tensor gain, Tensor p) {
        be.binary(BinaryOp.MUL, p, dy, u);
        be.addColumnSums(dgain, p);
        skipForward(be, du, dy, gain, p);
    }

    @Override
    public void close() {
        acts.close();
    }
}
