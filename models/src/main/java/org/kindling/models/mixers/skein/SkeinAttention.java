package org.kindling.models.mixers.skein;

import org.kindling.models.mixers.KvCache;
import org.kindling.models.mixers.MixerState;
import org.kindling.models.mixers.TokenMixer;
import org.kindling.models.nn.Activation;
import org.kindling.models.nn.Activations;
import org.kindling.models.nn.LayerContext;
import org.kindling.models.nn.Linear;
import org.kindling.models.nn.Seqs;
import org.kindling.models.nn.StepContext;
import org.kindling.ops.Backend;
import org.kindling.ops.Device;
import org.kindling.ops.Seeds;
import org.kindling.ops.Skein;
import org.kindling.ops.Tensor;

/**
 * Sketched multi-head attention over packed sequences: q, k, v projections, {@link Skein}'s
 * sketched attention, an output projection. Its draws come from (the pass's seed, layer, head, …),
 * so a resumed run redraws them bit-identically; the backward pass redraws the same samples and
 * treats them as constants. Decoding (causal only) keeps a KV cache per sequence, as attention's.
 */
final class SkeinAttention implements TokenMixer {
    final Linear q;
    final Linear k;
    final Linear v;
    final Linear proj;
    final Skein kernel;
    private final int width;
    private final int layer;
    private final StepContext step;
    private final Device dev;
    private final Activations acts;
    /** The seed of the pending forward's draws, for its backward. */
    private long forwardSeed;
    /** Saved for backward: q, k, v and attention output [T, C]. */
    private final Activation tq;
    private final Activation tk;
    private final Activation tv;
    private final Activation out;
    /** Backward scratch: d(attention output), dq, dk, dv [T, C]. */
    private final Activation dout;
    private final Activation dq;
    private final Activation dk;
    private final Activation dv;
    /** Decoding: q, k, v and attention output [R, C] of the R new rows. */
    private final Activation stepQ;
    private final Activation stepK;
    private final Activation stepV;
    private final Activation stepOut;

    SkeinAttention(LayerContext ctx, SkeinSpec spec) {
        int c = ctx.dModel();
        this.width = c;
        this.kernel = spec.kernel(c / spec.heads());
        this.layer = ctx.layer();
        this.step = ctx.step();
        this.q = new Linear(ctx.params(), ctx.child("q"), c, c, true, ctx.initStd());
        this.k = new Linear(ctx.params(), ctx.child("k"), c, c, true, ctx.initStd());
        this.v = new Linear(ctx.params(), ctx.child("v"), c, c, true, ctx.initStd());
        this.proj = new Linear(ctx.params(), ctx.child("proj"), c, c, true, ctx.residualStd());
        this.dev = ctx.device();
        this.acts = new Activations(dev, ctx.name(), ctx.step().workspace());
        tq = acts.f32("q");
        tk = acts.f32("k");
        tv = acts.f32("v");
        out = acts.f32("attn");
        dout = acts.scratch("skein.dattn");
        dq = acts.scratch("skein.dq");
        dk = acts.scratch("skein.dk");
        dv = acts.scratch("skein.dv");
        stepQ = acts.scratch("skein.step_q");
        stepK = acts.scratch("skein.step_k");
        stepV = acts.scratch("skein.step_v");
        stepOut = acts.scratch("skein.step_attn");
    }

    /** The seed of this layer's draws in the pass in progress. */
    private long seed() {
        return Seeds.derive(step.seed(), layer);
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
        forwardSeed = seed();
        Tensor a = out.write(t, width);
        y.device().backend().skeinForward(a, sq, sk, sv, seqs.varlen(), kernel, forwardSeed);
        proj.forward(y, a);
    }

    @Override
    public void backward(Tensor dx, Tensor dy, Seqs seqs) {
        int t = dy.rows();
        Backend be = dy.device().backend();
        Tensor d = dout.write(t, width);
        proj.backwardOverwrite(d, dy);
        Tensor gq = dq.zeros(t, width);
        Tensor gk = dk.zeros(t, width);
        Tensor gv = dv.zeros(t, width);
        be.skeinBackward(gq, gk, gv, d, tq.saved(t, width), tk.saved(t, width), tv.saved(t, width), seqs.varlen(), kernel,
                forwardSeed);
        q.backward(dx, gq);
        k.backward(dx, gk);
        v.backward(dx, gv);
    }

    @Override
    public MixerState newState(int sequences) {
        if (!kernel.causal()) {
            throw new UnsupportedOperationException("skein with causal: false attends later tokens, so it cannot decode;"
                    + " use causal: true");
        }
        if (sequences < 1) {
            throw new IllegalArgumentException("a decoding state needs at least one sequence, got " + sequences);
        }
        return new KvCache(dev, sequences, width);
    }

    @Override
    public void forwardStep(Tensor y, Tensor x, int[] cu, MixerState state) {
        KvCache cache = (KvCache) state;
        int rows = x.rows();
        Backend be = y.device().backend();
        Tensor sq = stepQ.write(rows, width);
        Tensor sk = stepK.write(rows, width);
        Tensor sv = stepV.write(rows, width);
        Tensor so = stepOut.write(rows, width);
        q.apply(sq, x);
        k.apply(sk, x);
        v.apply(sv, x);
        long seed = seed();
        for (int b = 0; b + 1 < cu.length; b++) {
            int n = cu[b + 1] - cu[b];
            if (n == 0) {
                continue;
            }
            int len = cache.length[b];
            int total = len + n;
            cache.reserve(b, total);
            be.copy(cache.k[b].view(len * width, n, width), sk.view(cu[b] * width, n, width));
            be.copy(cache.v[b].view(len * width, n, width), sv.view(cu[b] * width, n, width));
            be.skeinStep(so.view(cu[b] * width, n, width), sq.view(cu[b] * width, n, width),
                    cache.k[b].view(0, total, width), cache.v[b].view(0, total, width), len, kernel, seed);
            cache.length[b] = total;
        }
        proj.apply(y, so);
    }

    @Override
    public void close() {
        acts.close();
    }
}
