package org.kindling.models.mixers.attention;

import org.kindling.models.mixers.KvCache;
import org.kindling.models.mixers.MixerState;
import org.kindling.models.mixers.TokenMixer;
import org.kindling.models.nn.Activation;
import org.kindling.models.nn.Activations;
import org.kindling.models.nn.LayerContext;
import org.kindling.models.nn.LinearSpec;
import org.kindling.models.nn.ModuleConv;
import org.kindling.models.nn.MultiplicativeLinear;
import org.kindling.models.nn.Projection;
import org.kindling.models.nn.Seqs;
import org.kindling.ops.Attention;
import org.kindling.ops.Backend;
import org.kindling.ops.BlockMask;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;
import org.kindling.ops.Varlen;

/**
 * Causal multi-head self-attention over packed sequences: q, k, v projections (NKV key/value
 * heads for grouped-query attention), FlashAttention (block-sparse under the spec's mask), and an
 * output projection. Its decoding state is a KV cache per sequence, growing with the context.
 *
 * <p>With {@code qkv: multiplicative} (Scaling Transformers' sparse QKV, as trax's
 * {@code MultiplicativeConvCausalAttention} with its defaults: no v concatenation, no output
 * layer), one {@link MultiplicativeLinear} of S modules, shared by q, k and v, feeds three
 * {@link ModuleConv}s: q and k convolve over {@code qkv_kernel} modules, v over one (trax's
 * kernel_size=1), all causally over {@code qkv_length_kernel} tokens; the output projection
 * stays as {@code linear} configures it. The decoding state then also holds each convolution's
 * last L − 1 inputs per sequence.
 */
final class CausalSelfAttention implements TokenMixer {
    /** Dense q, k, v projections; null with multiplicative qkv. */
    final Projection q;
    final Projection k;
    final Projection v;
    final Projection proj;
    /** Multiplicative qkv: the shared layer and the q, k, v convolutions; null when dense. */
    private final MultiplicativeLinear mult;
    private final ModuleConv convQ;
    private final ModuleConv convK;
    private final ModuleConv convV;
    /** Decoding twins of the projections, so a pending backward stays intact. */
    private final Projection stepQProj;
    private final Projection stepKProj;
    private final Projection stepVProj;
    private final Projection stepProj;
    /** Widths NH·HS and NKV·HS. */
    private final int qOut;
    private final int kvOut;
    final Attention attn;
    /** Dense causal attention over the keys a masked decoding step gathers; null without a mask. */
    private final Attention gathered;
    private final Device dev;
    private final Activations acts;
    /** Saved for backward: q[T, NH·HS], k and v [T, NKV·HS], attention output [T, NH·HS], lse[NH, T]. */
    private final Activation tq;
    private final Activation tk;
    private final Activation tv;
    private final Activation out;
    private final Activation lse;
    /** Backward scratch: d(attention output)[T, NH·HS], dq[T, NH·HS], dk and dv [T, NKV·HS]. */
    private final Activation dout;
    private final Activation dq;
    private final Activation dk;
    private final Activation dv;
    /** Decoding: q, k, v and attention output of the R new rows, lse[NH, R]. */
    private final Activation stepQ;
    private final Activation stepK;
    private final Activation stepV;
    private final Activation stepOut;
    private final Activation stepLse;
    /** Masked decoding: the cached keys and values of the blocks a query block attends, gathered in order. */
    private final Activation stepGk;
    private final Activation stepGv;
    /** Multiplicative qkv: the shared layer's output [T, C] (saved), its gradient and its decoding rows [R, C]. */
    private final Activation mixed;
    private final Activation dmixed;
    private final Activation stepMixed;

    CausalSelfAttention(LayerContext ctx, AttentionSpec spec) {
        int c = ctx.dModel();
        int hs = c / spec.heads();
        this.attn = Attention.of(spec.heads(), spec.kvHeads(), hs).withCausal(true).withMask(spec.blockMask(ctx.maxSeq()));
        this.gathered = attn.mask() == null ? null : attn.withMask(null);
        this.dev = ctx.device();
        this.qOut = spec.heads() * hs;
        this.kvOut = spec.kvHeads() * hs;
        LinearSpec ls = spec.linear();
        QkvSpec qs = spec.qkv();
        if (qs.multiplicative()) {
            if (qOut != c || kvOut != c) {
                throw new IllegalArgumentException(ctx.name() + ": multiplicative qkv needs kv_heads = heads");
            }
            var ws = ctx.step().workspace();
            this.mult = new MultiplicativeLinear(ctx.params(), dev, ws, ctx.child("qkv_mult"), c, c, qs.modules(), true,
                    ctx.initStd());
            // The convolutions start near the identity's scale: std 1/√(L·K·M) keeps their output's variance.
            int m = c / qs.modules();
            this.convQ = new ModuleConv(ctx.params(), dev, ws, ctx.child("q_conv"), c, qs.modules(), qs.kernel(),
                    qs.lengthKernel(), 1 / Math.sqrt((double) qs.lengthKernel() * qs.kernel() * m));
            this.convK = new ModuleConv(ctx.params(), dev, ws, ctx.child("k_conv"), c, qs.modules(), qs.kernel(),
                    qs.lengthKernel(), 1 / Math.sqrt((double) qs.lengthKernel() * qs.kernel() * m));
            this.convV = new ModuleConv(ctx.params(), dev, ws, ctx.child("v_conv"), c, qs.modules(), 1, qs.lengthKernel(),
                    1 / Math.sqrt((double) qs.lengthKernel() * m));
            this.q = null;
            this.k = null;
            this.v = null;
            this.stepQProj = null;
            this.stepKProj = null;
            this.stepVProj = null;
        } else {
            this.mult = null;
            this.convQ = null;
            this.convK = null;
            this.convV = null;
            this.q = ls.build(ctx.params(), dev, ctx.child("q"), c, qOut, true, ctx.initStd());
            this.k = ls.build(ctx.params(), dev, ctx.child("k"), c, kvOut, true, ctx.initStd());
            this.v = ls.build(ctx.params(), dev, ctx.child("v"), c, kvOut, true, ctx.initStd());
            this.stepQProj = q.decodingTwin();
            this.stepKProj = k.decodingTwin();
            this.stepVProj = v.decodingTwin();
        }
        this.proj = ls.build(ctx.params(), dev, ctx.child("proj"), qOut, c, true, ctx.residualStd());
        this.stepProj = proj.decodingTwin();
        this.acts = new Activations(dev, ctx.name(), ctx.step().workspace());
        tq = acts.f32("q");
        tk = acts.f32("k");
        tv = acts.f32("v");
        out = acts.f32("attn");
        lse = acts.f32("lse");
        dout = acts.scratch("attn.dattn");
        dq = acts.scratch("attn.dq");
        dk = acts.scratch("attn.dk");
        dv = acts.scratch("attn.dv");
        stepQ = acts.scratch("attn.step_q");
        stepK = acts.scratch("attn.step_k");
        stepV = acts.scratch("attn.step_v");
        stepOut = acts.scratch("attn.step_attn");
        stepLse = acts.scratch("attn.step_lse");
        stepGk = acts.scratch("attn.step_gk");
        stepGv = acts.scratch("attn.step_gv");
        mixed = acts.f32("qkv_mult");
        dmixed = acts.scratch("attn.dqkv_mult");
        stepMixed = acts.scratch("attn.step_qkv_mult");
    }

    @Override
    public void forward(Tensor y, Tensor x, Seqs seqs) {
        int t = x.rows();
        Tensor a = out.write(t, qOut);
        if (mult != null) {
            Tensor h = mixed.write(t, qOut);
            mult.forward(h, x);
            convQ.forward(tq.write(t, qOut), h, seqs.host());
            convK.forward(tk.write(t, kvOut), h, seqs.host());
            convV.forward(tv.write(t, kvOut), h, seqs.host());
        } else {
            q.forward(tq.write(t, qOut), x);
            k.forward(tk.write(t, kvOut), x);
            v.forward(tv.write(t, kvOut), x);
        }
        Varlen cu = seqs.varlen();
        y.device().backend().attentionForward(a, lse.write(attn.heads(), t), tq.saved(t, qOut), tk.saved(t, kvOut),
                tv.saved(t, kvOut), cu, cu, attn);
        proj.forward(y, a);
    }

    @Override
    public void backward(Tensor dx, Tensor dy, Seqs seqs) {
        int t = dy.rows();
        Backend be = dy.device().backend();
        Tensor d = dout.write(t, qOut);
        proj.backwardOverwrite(d, dy);
        Tensor gq = dq.zeros(t, qOut);
        Tensor gk = dk.zeros(t, kvOut);
        Tensor gv = dv.zeros(t, kvOut);
        Varlen cu = seqs.varlen();
        be.attentionBackward(gq, gk, gv, d, tq.saved(t, qOut), tk.saved(t, kvOut), tv.saved(t, kvOut), out.saved(t, qOut),
                lse.saved(attn.heads(), t), cu, cu, attn);
        if (mult != null) {
            Tensor dh = dmixed.zeros(t, qOut);
            convQ.backward(dh, gq);
            convK.backward(dh, gk);
            convV.backward(dh, gv);
            mult.backward(dx, dh);
        } else {
            q.backward(dx, gq);
            k.backward(dx, gk);
            v.backward(dx, gv);
        }
    }

    /** Attention's decoding state: the KV cache [capacity, NKV·HS] per sequence, kernel offsets and the convolutions' inputs. */
    private static final class Cache extends KvCache {
        final Tensor cuQ;
        final Tensor cuK;
        /** Multiplicative qkv: the q, k, v convolutions' remembered inputs; null when dense. */
        final ModuleConv.State[] conv;

        Cache(Device dev, int sequences, int width, ModuleConv.State[] conv) {
            super(dev, sequences, width);
            this.conv = conv;
            cuQ = dev.allocate(DType.I32, 2);
            cuK = dev.allocate(DType.I32, 2);
        }

        @Override
        public long bytes() {
            long n = super.bytes();
            if (conv != null) {
                for (ModuleConv.State s : conv) {
                    n += s.bytes();
                }
            }
            return n;
        }

        @Override
        public void close() {
            super.close();
            cuQ.close();
            cuK.close();
            if (conv != null) {
                for (ModuleConv.State s : conv) {
                    s.close();
                }
            }
        }
    }

    @Override
    public MixerState newState(int sequences) {
        ModuleConv.State[] conv = mult == null ? null
                : new ModuleConv.State[] {convQ.newState(sequences), convK.newState(sequences), convV.newState(sequences)};
        return new Cache(dev, sequences, kvOut, conv);
    }

    @Override
    public void forwardStep(Tensor y, Tensor x, int[] cu, MixerState state) {
        Cache cache = (Cache) state;
        int rows = x.rows();
        Backend be = y.device().backend();
        Tensor sq = stepQ.write(rows, qOut);
        Tensor sk = stepK.write(rows, kvOut);
        Tensor sv = stepV.write(rows, kvOut);
        Tensor so = stepOut.write(rows, qOut);
        BlockMask mask = attn.mask();
        for (int b = 0; mask != null && b + 1 < cu.length; b++) {
            // Checked before any state advances, so a refused step leaves the session as it was.
            int total = cache.length[b] + cu[b + 1] - cu[b];
            if (total > mask.blocks() * mask.blockSize()) {
                throw new IllegalArgumentException("sequence " + b + " would reach " + total + " tokens but the attention "
                        + mask + " covers " + mask.blocks() * mask.blockSize() + " (the model's max_seq, in whole blocks)");
            }
        }
        if (mult != null) {
            Tensor h = stepMixed.write(rows, qOut);
            mult.apply(h, x);
            convQ.step(sq, h, cu, cache.conv[0]);
            convK.step(sk, h, cu, cache.conv[1]);
            convV.step(sv, h, cu, cache.conv[2]);
        } else {
            stepQProj.forward(sq, x);
            stepKProj.forward(sk, x);
            stepVProj.forward(sv, x);
        }
        for (int b = 0; b + 1 < cu.length; b++) {
            int n = cu[b + 1] - cu[b];
            if (n == 0) {
                continue;
            }
            int len = cache.length[b];
            int total = len + n;
            cache.reserve(b, total);
            be.copy(cache.k[b].view(len * kvOut, n, kvOut), sk.view(cu[b] * kvOut, n, kvOut));
            be.copy(cache.v[b].view(len * kvOut, n, kvOut), sv.view(cu[b] * kvOut, n, kvOut));
            if (mask == null) {
                // Causal attention aligns the n new queries with the last n of the cached keys.
                attendCached(be, cache, so, sq, cu[b], n, cache.k[b].view(0, total, kvOut), cache.v[b].view(0, total, kvOut),
                        attn);
            } else {
                forwardStepMasked(be, cache, b, so, sq, cu[b], len, total);
            }
            cache.length[b] = total;
        }
        stepProj.forward(y, so);
    }

    /** Attention of {@code n} new query rows from {@code row} on keys and values whose last n rows are theirs. */
    private void attendCached(Backend be, Cache cache, Tensor so, Tensor sq, int row, int n, Tensor keys, Tensor values,
                              Attention a) {
        int[] hostQ = {0, n};
        int[] hostK = {0, keys.rows()};
        cache.cuQ.copyFrom(hostQ);
        cache.cuK.copyFrom(hostK);
        be.attentionForward(so.view(row * qOut, n, qOut), stepLse.write(a.heads(), n), sq.view(row * qOut, n, qOut), keys, values,
                Varlen.of(cache.cuQ, hostQ), Varlen.of(cache.cuK, hostK), a);
    }

    /**
     * Sequence b's new positions len..total−1 under the block mask. The block-sparse kernel needs as
     * many queries as keys, so each query block's new rows instead attend, densely and causally,
     * the cached rows of the key blocks the mask keeps for that block, gathered in order: the
     * block's own rows come last, so causal alignment of the last query with the last key holds,
     * and every earlier kept block lies wholly before the queries.
     */
    private void forwardStepMasked(Backend be, Cache cache, int b, Tensor so, Tensor sq, int row, int len, int total) {
        BlockMask mask = attn.mask();
        int bs = mask.blockSize();
        for (int p0 = len; p0 < total; ) {
            int qb = p0 / bs;
            int p1 = Math.min(total, (qb + 1) * bs);
            int keys = 0;
            int first = -1;
            boolean contiguous = true;
            for (int j = 0; j <= qb; j++) {
                if (mask.allowed(qb, j)) {
                    contiguous &= first < 0 || j == first + keys / bs;
                    first = first < 0 ? j : first;
                    keys += Math.min(p1, (j + 1) * bs) - j * bs;
                }
            }
            Tensor k;
            Tensor v;
            if (contiguous) {
                k = cache.k[b].view(first * bs * kvOut, keys, kvOut);
                v = cache.v[b].view(first * bs * kvOut, keys, kvOut);
            } else {
                k = stepGk.write(keys, kvOut);
                v = stepGv.write(keys, kvOut);
                int at = 0;
                for (int j = 0; j <= qb; j++) {
                    if (mask.allowed(qb, j)) {
                        int rows = Math.min(p1, (j + 1) * bs) - j * bs;
                        be.copy(k.view(at * kvOut, rows, kvOut), cache.k[b].view(j * bs * kvOut, rows, kvOut));
                        be.copy(v.view(at * kvOut, rows, kvOut), cache.v[b].view(j * bs * kvOut, rows, kvOut));
                        at += rows;
                    }
                }
            }
            attendCached(be, cache, so, sq, row + p0 - len, p1 - p0, k, v, gathered);
            p0 = p1;
        }
    }

    @Override
    public void close() {
        for (Projection p : new Projection[] {stepProj, stepVProj, stepKProj, stepQProj, proj, v, k, q}) {
            if (p != null) {
                p.close();
            }
        }
        if (mult != null) {
            convV.close();
            convK.close();
            convQ.close();
            mult.close();
        }
        acts.close();
    }
}
