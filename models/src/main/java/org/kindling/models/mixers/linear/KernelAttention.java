package org.kindling.models.mixers.linear;

import org.kindling.models.mixers.MixerState;
import org.kindling.models.mixers.TokenMixer;
import org.kindling.models.nn.Activation;
import org.kindling.models.nn.Activations;
import org.kindling.models.nn.LayerContext;
import org.kindling.models.nn.Linear;
import org.kindling.models.nn.Seqs;
import org.kindling.ops.Backend;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;

/**
 * Causal linear attention over packed sequences: q, k, v projections, a feature map φ on q and k
 * (elu + 1, FAVOR+ or spectral random features), out[t] = Σ_{j≤t} (φ(q_t)·φ(k_j)) v_j / (φ(q_t)·Σ_{j≤t} φ(k_j) + eps)
 * per head, and an output projection. Its decoding state is Σ φ(k) vᵀ [NH, F, HS] and Σ φ(k)
 * [NH, F] per sequence: constant in the context length.
 */
final class KernelAttention implements TokenMixer {
    final Linear q;
    final Linear k;
    final Linear v;
    final Linear proj;
    final FeatureMap features;
    private final int heads;
    private final int width;
    private final int featureWidth;
    private final float eps;
    private final Device dev;
    private final Activations acts;
    /** Saved for backward: q and k [T, C] as the feature map left them, v [T, C], φ(q), φ(k) [T, NH·F], attention output [T, C]. */
    private final Activation tq;
    private final Activation tk;
    private final Activation tv;
    private final Activation phiQ;
    private final Activation phiK;
    private final Activation out;
    /** Backward scratch: d(attention output), dq, dk, dv [T, C]; dφ(q), dφ(k) [T, NH·F]. */
    private final Activation dout;
    private final Activation dq;
    private final Activation dk;
    private final Activation dv;
    private final Activation dphiQ;
    private final Activation dphiK;
    /** Decoding: q, k, v [R, C], φ(q), φ(k) [R, NH·F] and attention output [R, C] of the R new rows. */
    private final Activation stepQ;
    private final Activation stepK;
    private final Activation stepV;
    private final Activation stepPhiQ;
    private final Activation stepPhiK;
    private final Activation stepOut;

    KernelAttention(LayerContext ctx, int heads, FeatureMap features, double eps) {
        int c = ctx.dModel();
        this.heads = heads;
        this.width = c;
        this.features = features;
        this.featureWidth = heads * features.features();
        this.eps = (float) eps;
        this.q = new Linear(ctx.params(), ctx.child("q"), c, c, true, ctx.initStd());
        this.k = new Linear(ctx.params(), ctx.child("k"), c, c, true, ctx.initStd());
        this.v = new Linear(ctx.params(), ctx.child("v"), c, c, true, ctx.initStd());
        this.proj = new Linear(ctx.params(), ctx.child("proj"), c, c, true, ctx.residualStd());
        this.dev = ctx.device();
        this.acts = new Activations(dev, ctx.name(), ctx.step().workspace());
        tq = acts.f32("q");
        tk = acts.f32("k");
        tv = acts.f32("v");
        phiQ = acts.f32("phi_q");
        phiK = acts.f32("phi_k");
        out = acts.f32("attn");
        dout = acts.scratch("kernel_attn.dattn");
        dq = acts.scratch("kernel_attn.dq");
        dk = acts.scratch("kernel_attn.dk");
        dv = acts.scratch("kernel_attn.dv");
        dphiQ = acts.scratch("kernel_attn.dphi_q");
        dphiK = acts.scratch("kernel_attn.dphi_k");
        stepQ = acts.scratch("kernel_attn.step_q");
        stepK = acts.scratch("kernel_attn.step_k");
        stepV = acts.scratch("kernel_attn.step_v");
        stepPhiQ = acts.scratch("kernel_attn.step_phi_q");
        stepPhiK = acts.scratch("kernel_attn.step_phi_k");
        stepOut = acts.scratch("kernel_attn.step_attn");
    }

    @Override
    public void forward(Tensor y, Tensor x, Seqs seqs) {
        int t = x.rows();
        Tensor sq = tq.write(t, width);
        Tensor sk = tk.write(t, width);
        Tensor sv = tv.write(t, width);
        q.forward(sq, x);
        k.forward(sk, x);
        v.forward(sv, x);
        Tensor fq = phiQ.write(t, featureWidth);
        Tensor fk = phiK.write(t, featureWidth);
        features.forward(fq, sq, true);
        features.forward(fk, sk, false);
        Tensor a = out.write(t, width);
        y.device().backend().linearAttentionForward(a, fq, fk, sv, seqs.varlen(), heads, eps);
        proj.forward(y, a);
    }

    @Override
    public void backward(Tensor dx, Tensor dy, Seqs seqs) {
        int t = dy.rows();
        Backend be = dy.device().backend();
        Tensor d = dout.write(t, width);
        proj.backwardOverwrite(d, dy);
        Tensor fq = phiQ.saved(t, featureWidth);
        Tensor fk = phiK.saved(t, featureWidth);
        Tensor gfq = dphiQ.zeros(t, featureWidth);
        Tensor gfk = dphiK.zeros(t, featureWidth);
        Tensor gv = dv.zeros(t, width);
        be.linearAttentionBackward(gfq, gfk, gv, d, fq, fk, tv.saved(t, width), seqs.varlen(), heads, eps);
        Tensor gq = dq.write(t, width);
        Tensor gk = dk.write(t, width);
        features.backward(gq, gfq, fq, tq.saved(t, width), true);
        features.backward(gk, gfk, fk, tk.saved(t, width), false);
        q.backward(dx, gq);
        k.backward(dx, gk);
        v.backward(dx, gv);
    }

    @Override
    public void startStep(long step) {
        features.startStep(step);
    }

    /** Per sequence b: Σ φ(k) vᵀ at state[b] [NH, F, HS] and Σ φ(k) at norm[b] [NH, F]. */
    private static final class Recurrent implements MixerState {
        final Tensor state;
        final Tensor norm;

        Recurrent(Device dev, int sequences, int heads, int features, int headDim) {
            state = dev.allocate(DType.F32, sequences, heads * features * headDim);
            norm = dev.allocate(DType.F32, sequences, heads * features);
        }

        @Override
        public long bytes() {
            return ((long) state.numel() + norm.numel()) * Float.BYTES;
        }

        @Override
        public void close() {
            state.close();
            norm.close();
        }
    }

    @Override
    public MixerState newState(int sequences) {
        if (sequences < 1) {
            throw new IllegalArgumentException("a decoding state needs at least one sequence, got " + sequences);
        }
        return new Recurrent(dev, sequences, heads, features.features(), width / heads);
    }

    @Override
    public void forwardStep(Tensor y, Tensor x, int[] cu, MixerState state) {
        Recurrent r = (Recurrent) state;
        int rows = x.rows();
        Backend be = y.device().backend();
        Tensor sq = stepQ.write(rows, width);
        Tensor sk = stepK.write(rows, width);
        Tensor sv = stepV.write(rows, width);
        q.apply(sq, x);
        k.apply(sk, x);
        v.apply(sv, x);
        Tensor fq = stepPhiQ.write(rows, featureWidth);
        Tensor fk = stepPhiK.write(rows, featureWidth);
        features.forward(fq, sq, true);
        features.forward(fk, sk, false);
        Tensor so = stepOut.write(rows, width);
        int stateWidth = r.state.cols();
        for (int b = 0; b + 1 < cu.length; b++) {
            int n = cu[b + 1] - cu[b];
            if (n == 0) {
                continue;
            }
            be.linearAttentionStep(so.view(cu[b] * width, n, width), r.state.view(b * stateWidth, stateWidth),
                    r.norm.view(b * featureWidth, featureWidth), fq.view(cu[b] * featureWidth, n, featureWidth),
                    fk.view(cu[b] * featureWidth, n, featureWidth), sv.view(cu[b] * width, n, width), heads, eps);
        }
        proj.apply(y, so);
    }

    @Override
    public void close() {
        features.close();
        acts.close();
    }
}
