package org.kindling.models.channel;

import org.kindling.models.nn.Activation;
import org.kindling.models.nn.Activations;
import org.kindling.models.nn.LayerContext;
import org.kindling.models.nn.LinearSpec;
import org.kindling.models.nn.Projection;
import org.kindling.ops.Tensor;

/**
 * GPT-2's MLP with structured projections (pixelfly or butterfly, see {@link LinearSpec}):
 * y = proj(GELU(fc(x))), hidden width H = ratio·C. Decoding runs twins of the projections so a
 * pending backward stays intact.
 */
final class StructuredMlp implements ChannelMixer {
    private final Projection fc;
    private final Projection proj;
    private final Projection stepFc;
    private final Projection stepProj;
    private final int hidden;
    private final Activations acts;
    /** Saved for backward: h = fc(x) and GELU(h) [T, H]. */
    private final Activation h;
    private final Activation gelu;
    private final Activation dgelu;
    private final Activation dh;
    private final Activation stepH;
    private final Activation stepGelu;

    StructuredMlp(LayerContext ctx, int ratio, boolean bias, LinearSpec linear) {
        int c = ctx.dModel();
        this.hidden = ratio * c;
        this.fc = linear.build(ctx.params(), ctx.device(), ctx.child("fc"), c, hidden, bias, ctx.initStd());
        this.proj = linear.build(ctx.params(), ctx.device(), ctx.child("proj"), hidden, c, bias, ctx.residualStd());
        this.stepFc = fc.decodingTwin();
        this.stepProj = proj.decodingTwin();
        this.acts = new Activations(ctx.device(), ctx.name(), ctx.step().workspace());
        h = acts.f32("h");
        gelu = acts.f32("gelu");
        dgelu = acts.scratch("mlp.dgelu");
        dh = acts.scratch("mlp.dh");
        stepH = acts.scratch("mlp.step_h");
        stepGelu = acts.scratch("mlp.step_gelu");
    }

    @Override
    public void forward(Tensor y, Tensor x) {
        int t = x.rows();
        Tensor th = h.write(t, hidden);
        Tensor g = gelu.write(t, hidden);
        fc.forward(th, x);
        x.device().backend().geluForward(g, th);
        proj.forward(y, g);
    }

    @Override
    public void forwardStep(Tensor y, Tensor x) {
        int t = x.rows();
        Tensor th = stepH.write(t, hidden);
        Tensor g = stepGelu.write(t, hidden);
        stepFc.forward(th, x);
        y.device().backend().geluForward(g, th);
        stepProj.forward(y, g);
    }

    @Override
    public void backward(Tensor dx, Tensor dy) {
        int t = dy.rows();
        Tensor dg = dgelu.zeros(t, hidden);
        proj.backward(dg, dy);
        Tensor d = dh.zeros(t, hidden);
        dy.device().backend().geluBackward(d, dg, h.saved(t, hidden));
        fc.backward(dx, d);
    }

    @Override
    public void close() {
        stepProj.close();
        stepFc.close();
        proj.close();
        fc.close();
        acts.close();
    }
}
