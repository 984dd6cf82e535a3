package org.kindling.models;

import org.kindling.ops.Attention;
import org.kindling.ops.Backend;
import org.kindling.ops.Tensor;

/**
 * Causal multi-head self-attention over packed sequences: q, k, v projections (NKV key/value
 * heads for grouped-query attention), FlashAttention, and an output projection.
 */
final class CausalSelfAttention implements TokenMixer {
    final Linear q;
    final Linear k;
    final Linear v;
    final Linear proj;
    final Attention attn;
    private final Buffers saved;

    CausalSelfAttention(Params.Builder pb, Buffers saved, String name, ModelConfig cfg, double std, double residualStd) {
        int c = cfg.dModel();
        int hs = cfg.headDim();
        this.attn = Attention.of(cfg.nHead(), cfg.nKvHead(), hs).withCausal(true);
        this.q = new Linear(pb, name + ".q", c, cfg.nHead() * hs, true, std);
        this.k = new Linear(pb, name + ".k", c, cfg.nKvHead() * hs, true, std);
        this.v = new Linear(pb, name + ".v", c, cfg.nKvHead() * hs, true, std);
        this.proj = new Linear(pb, name + ".proj", cfg.nHead() * hs, c, true, residualStd);
        this.saved = saved;
    }

    @Override
    public void forward(Tensor y, Tensor x, Seqs seqs) {
        int t = x.rows();
        Tensor tq = saved.f32("q", t, q.out);
        Tensor tk = saved.f32("k", t, k.out);
        Tensor tv = saved.f32("v", t, v.out);
        Tensor out = saved.f32("attn", t, q.out);
        Tensor lse = saved.f32("lse", attn.heads(), t);
        q.forward(tq, x);
        k.forward(tk, x);
        v.forward(tv, x);
        y.device().backend().attentionForward(out, lse, tq, tk, tv, seqs.cuSeqlens(), seqs.cuSeqlens(), attn);
        proj.forward(y, out);
    }

    @Override
    public void backward(Tensor dx, Tensor dy, Seqs seqs) {
        int t = dy.rows();
        Backend be = dy.device().backend();
        Tensor dout = saved.f32("dattn", t, q.out);
        proj.backwardOverwrite(dout, dy);
        Tensor dq = saved.zeros("dq", t, q.out);
        Tensor dk = saved.zeros("dk", t, k.out);
        Tensor dv = saved.zeros("dv", t, v.out);
        be.attentionBackward(dq, dk, dv, dout, saved.saved("q", t, q.out), saved.saved("k", t, k.out),
                saved.saved("v", t, v.out), saved.saved("attn", t, q.out), saved.saved("lse", attn.heads(), t), seqs.cuSeqlens(),
                seqs.cuSeqlens(), attn);
        q.backward(dx, dq);
        k.backward(dx, dk);
        v.backward(dx, dv);
    }

    /** Keys and values of every token seen so far: k, v[maxSeq, NKV·HS]. */
    private static final class KvCache implements DecodeState {
        final Tensor k;
        final Tensor v;
        final Tensor cuQ;
        final Tensor cuK;
        int length;

        KvCache(org.kindling.ops.Device dev, int maxSeq, int width) {
            k = dev.allocate(org.kindling.ops.DType.F32, maxSeq, width);
            v = dev.allocate(org.kindling.ops.DType.F32, maxSeq, width);
            cuQ = dev.allocate(org.kindling.ops.DType.I32, 2);
            cuK = dev.allocate(org.kindling.ops.DType.I32, 2);
        }

        @Override
        public int length() {
            return length;
        }

        @Override
        public void close() {
            k.close();
            v.close();
            cuQ.close();
            cuK.close();
        }
    }

    @Override
    public DecodeState newState(int maxSeq) {
        return new KvCache(saved.device(), maxSeq, k.out);
    }

    @Override
    public void forwardStep(Tensor y, Tensor x, DecodeState state) {
        KvCache cache = (KvCache) state;
        int t = x.rows();
        int total = cache.length + t;
        if (total > cache.k.dim(0)) {
            throw new IllegalArgumentException("decoding past the " + cache.k.dim(0) + " positions of the KV cache");
        }
        Backend be = y.device().backend();
        Tensor tq = saved.f32("step_q", t, q.out);
        Tensor out = saved.f32("step_attn", t, q.out);
        Tensor lse = saved.f32("step_lse", attn.heads(), t);
        q.apply(tq, x);
        k.apply(cache.k.view(cache.length * k.out, t, k.out), x);
        v.apply(cache.v.view(cache.length * v.out, t, v.out), x);
        cache.cuQ.copyFrom(new int[] {0, t});
        cache.cuK.copyFrom(new int[] {0, total});
        // Causal attention aligns the t new queries with the last t of the cached keys.
        be.attentionForward(out, lse, tq, cache.k.view(0, total, k.out), cache.v.view(0, total, v.out), cache.cuQ, cache.cuK, attn);
        proj.apply(y, out);
        cache.length = total;
    }

    @Override
    public void close() {
        saved.close();
    }
}
