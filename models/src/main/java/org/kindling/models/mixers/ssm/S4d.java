package org.kindling.models.mixers.ssm;

import org.kindling.models.mixers.MixerState;
import org.kindling.models.mixers.TokenMixer;
import org.kindling.models.nn.Activation;
import org.kindling.models.nn.Activations;
import org.kindling.models.nn.LayerContext;
import org.kindling.models.nn.Linear;
import org.kindling.models.nn.Seqs;
import org.kindling.ops.Backend;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;

/**
 * S4D over packed sequences: h = SSM(x) + D⊙x per channel (C channels, the diagonal SSM of
 * {@link DiagonalSsm}), y = out(GELU(h)). Decoding runs the SSM as a recurrence on a [C, N/2, 2]
 * complex state per sequence, constant in the context length.
 */
final class S4d implements TokenMixer {
    final DiagonalSsm ssm;
    final Linear out;
    private final int c;
    private final Device dev;
    private final Activations acts;
    /** Saved for backward: h = SSM(x) + D⊙x and GELU(h) [T, C]. */
    private final Activation h;
    private final Activation gelu;
    /** Backward scratch: dGELU and dh [T, C]. */
    private final Activation dgelu;
    private final Activation dh;
    /** Decoding: h and GELU(h) of the R new rows [R, C]. */
    private final Activation stepH;
    private final Activation stepGelu;
    /** The forward's input, which the caller keeps unchanged until backward. */
    private Tensor x;

    S4d(LayerContext ctx, S4dSpec spec) {
        this.c = ctx.dModel();
        this.ssm = new DiagonalSsm(ctx, "", c, spec.dState(), spec.init().equals("inv"), spec.dtMin(), spec.dtMax(),
                spec.dynamicsLr(), spec.block());
        this.out = new Linear(ctx.params(), ctx.child("out"), c, c, true, ctx.residualStd());
        this.dev = ctx.device();
        this.acts = new Activations(dev, ctx.name(), ctx.step().workspace());
        h = acts.f32("h");
        gelu = acts.f32("gelu");
        dgelu = acts.scratch("s4d.dgelu");
        dh = acts.scratch("s4d.dh");
        stepH = acts.scratch("s4d.step_h");
        stepGelu = acts.scratch("s4d.step_gelu");
    }

    @Override
    public void forward(Tensor y, Tensor x, Seqs seqs) {
        int t = x.rows();
        Tensor th = h.write(t, c);
        Tensor g = gelu.write(t, c);
        ssm.forward(th, x, seqs.varlen());
        y.device().backend().geluForward(g, th);
        out.forward(y, g);
        this.x = x;
    }

    @Override
    public void backward(Tensor dx, Tensor dy, Seqs seqs) {
        int t = dy.rows();
        if (x == null || x.rows() != t) {
            throw new IllegalStateException("s4d: backward for " + t + " rows without a forward over them");
        }
        Backend be = dy.device().backend();
        Tensor dg = dgelu.write(t, c);
        out.backwardOverwrite(dg, dy);
        Tensor d = dh.zeros(t, c);
        be.geluBackward(d, dg, h.saved(t, c));
        ssm.backward(dx, d, x, seqs.varlen());
    }

    @Override
    public MixerState newState(int sequences) {
        return new SsmState(dev, sequences, ssm.stateShape(), 0, 0);
    }

    @Override
    public void forwardStep(Tensor y, Tensor x, int[] cu, MixerState state) {
        SsmState s = (SsmState) state;
        int rows = x.rows();
        Tensor th = stepH.write(rows, c);
        Tensor g = stepGelu.write(rows, c);
        for (int b = 0; b + 1 < cu.length; b++) {
            int n = cu[b + 1] - cu[b];
            if (n > 0) {
                ssm.step(th.view(cu[b] * c, n, c), s.ssm(b), x.view(cu[b] * c, n, c));
            }
        }
        y.device().backend().geluForward(g, th);
        out.apply(y, g);
    }

    @Override
    public void close() {
        acts.close();
        ssm.close();
    }
}
