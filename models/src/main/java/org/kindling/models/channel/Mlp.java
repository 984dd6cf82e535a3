package org.kindling.models.channel;

import org.kindling.models.nn.Activation;
import org.kindling.models.nn.Activations;
import org.kindling.models.nn.LayerContext;
import org.kindling.models.nn.Linear;
import org.kindling.ops.Backend;
import org.kindling.ops.Tensor;

/** GPT-2's MLP: y = proj(GELU(fc(x))), hidden width H = ratio·C, with or without biases. */
final class Mlp implements ChannelMixer {
    final Linear fc;
    final Linear proj;
    private final int hidden;
    private final Activations acts;
    /** Saved for backward: h = fc(x) [T, H] (with the bias, which biasGeluForward adds) and GELU(h) [T, H]. */
    private final Activation h;
    private final Activation gelu;
    /** With an fc bias, GELU's tanh intermediate exp(2u) [T, H], kept so backward need not recompute it. */
    private final Activation geluExp;
    /** Backward scratch: dGELU and dh [T, H]. */
    private final Activation dgelu;
    private final Activation dh;
    /** Decoding's own h and GELU(h) [R, H], so a pending backward stays intact. */
    private final Activation stepH;
    private final Activation stepGelu;

    Mlp(LayerContext ctx, int ratio, boolean bias) {
        int c = ctx.dModel();
        this.hidden = ratio * c;
        this.fc = new Linear(ctx.params(), ctx.child("fc"), c, hidden, bias, ctx.initStd());
        this.proj = new Linear(ctx.params(), ctx.child("proj"), hidden, c, bias, ctx.residualStd());
        this.acts = new Activations(ctx.device(), ctx.name(), ctx.step().workspace());
        h = acts.f32("h");
        gelu = acts.f32("gelu");
        geluExp = acts.f32("gelu_exp");
        dgelu = acts.scratch("mlp.dgelu");
        dh = acts.scratch("mlp.dh");
        stepH = acts.scratch("mlp.step_h");
        stepGelu = acts.scratch("mlp.step_gelu");
    }

    @Override
    public void forward(Tensor y, Tensor x) {
        proj.forward(y, hidden(x));
    }

    /** With a proj bias, that bias, the dropout and the residual add are one pass ({@code biasDropoutAddForward}). */
    @Override
    public void forwardAdd(Tensor y, Tensor x, Tensor residual, float p, long seed) {
        if (proj.bias == null) {
            ChannelMixer.super.forwardAdd(y, x, residual, p, seed);
            return;
        }
        proj.forwardWithoutBias(y, hidden(x));
        y.device().backend().biasDropoutAddForward(y, y, proj.bias.value(), residual, p, seed);
    }

    /** GELU(fc(x)) [T, H], with h and what GELU's backward needs saved. */
    private Tensor hidden(Tensor x) {
        int t = x.rows();
        Tensor th = h.write(t, hidden);
        Tensor g = gelu.write(t, hidden);
        if (fc.bias != null) {
            fc.forwardWithoutBias(th, x);
            x.device().backend().biasGeluForward(g, geluExp.write(t, hidden), th, fc.bias.value());
        } else {
            fc.forward(th, x);
            x.device().backend().geluForward(g, th);
        }
        return g;
    }

    @Override
    public void forwardStep(Tensor y, Tensor x) {
        int t = x.rows();
        Tensor th = stepH.write(t, hidden);
        Tensor g = stepGelu.write(t, hidden);
        fc.apply(th, x);
        y.device().backend().geluForward(g, th);
        proj.apply(y, g);
    }

    @Override
    public void backward(Tensor dx, Tensor dy) {
        int t = dy.rows();
        Backend be = dy.device().backend();
        Tensor dg = dgelu.write(t, hidden);
        proj.backwardOverwrite(dg, dy);
        if (fc.bias != null) {
            Tensor d = dh.write(t, hidden);
            be.geluBackwardBias(d, fc.bias.grad(), dg, h.saved(t, hidden), geluExp.saved(t, hidden));
            fc.backwardWithoutBias(dx, d);
        } else {
            Tensor d = dh.zeros(t, hidden);
            be.geluBackward(d, dg, h.saved(t, hidden));
            fc.backward(dx, d);
        }
    }

    @Override
    public void close() {
        acts.close();
    }
}
