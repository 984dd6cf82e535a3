package org.kindling.models;

import org.kindling.ops.Backend;
import org.kindling.ops.Tensor;

/** GPT-2's MLP: y = proj(GELU(fc(x))), hidden width ratio·C. */
final class Mlp implements ChannelMixer {
    final Linear fc;
    final Linear proj;
    private final int hidden;
    private final Buffers saved;

    Mlp(Params.Builder pb, Buffers saved, String name, int channels, int ratio, double std, double residualStd) {
        this.hidden = ratio * channels;
        this.fc = new Linear(pb, name + ".fc", channels, hidden, true, std);
        this.proj = new Linear(pb, name + ".proj", hidden, channels, true, residualStd);
        this.saved = saved;
    }

    @Override
    public void forward(Tensor y, Tensor x) {
        int t = x.rows();
        Tensor h = saved.f32("h", t, hidden);
        Tensor g = saved.f32("gelu", t, hidden);
        fc.forward(h, x);
        y.device().backend().geluForward(g, h);
        proj.forward(y, g);
    }

    @Override
    public void forwardStep(Tensor y, Tensor x) {
        int t = x.rows();
        Tensor h = saved.f32("step_h", t, hidden);
        Tensor g = saved.f32("step_gelu", t, hidden);
        fc.apply(h, x);
        y.device().backend().geluForward(g, h);
        proj.apply(y, g);
    }

    @Override
    public void backward(Tensor dx, Tensor dy) {
        int t = dy.rows();
        Backend be = dy.device().backend();
        Tensor dg = saved.f32("dgelu", t, hidden);
        proj.backwardOverwrite(dg, dy);
        Tensor dh = saved.zeros("dh", t, hidden);
        be.geluBackward(dh, dg, saved.saved("h", t, hidden));
        fc.backward(dx, dh);
    }

    @Override
    public void close() {
        saved.close();
    }
}
