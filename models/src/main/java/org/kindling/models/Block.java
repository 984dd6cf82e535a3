package org.kindling.models;

import org.kindling.ops.Backend;
import org.kindling.ops.BinaryOp;
import org.kindling.ops.Tensor;

/** A pre-LayerNorm transformer block: h = x + mixer(ln1(x)); y = h + channelMixer(ln2(h)). */
final class Block implements AutoCloseable {
    final LayerNorm ln1;
    final TokenMixer mixer;
    final LayerNorm ln2;
    final ChannelMixer channel;
    private final int c;
    private final Buffers saved;

    Block(LayerNorm ln1, TokenMixer mixer, LayerNorm ln2, ChannelMixer channel, int c, Buffers saved) {
        this.ln1 = ln1;
        this.mixer = mixer;
        this.ln2 = ln2;
        this.channel = channel;
        this.c = c;
        this.saved = saved;
    }

    /** Residual dropout of the next forward and backward: probability and the seed of this block's masks. */
    private float dropout;
    private long seed;

    void dropout(float p, long seed) {
        this.dropout = p;
        this.seed = seed;
    }

    void forward(Tensor y, Tensor x, Seqs seqs) {
        forward(y, x, seqs, null);
    }

    /**
     * The forward for t new tokens of one sequence during incremental decoding (never with
     * dropout): its own buffers, and nothing kept, so a pending backward stays intact.
     */
    void forwardStep(Tensor y, Tensor x, DecodeState state) {
        forward(y, x, null, state);
    }

    /** h = x + drop(mix(ln1(x))); y = h + drop(channel(ln2(h))): training over seqs, or decoding from state. */
    private void forward(Tensor y, Tensor x, Seqs seqs, DecodeState state) {
        boolean step = state != null;
        String prefix = step ? "step_" : "";
        float p = step ? 0f : dropout;
        int t = x.rows();
        Backend be = x.device().backend();
        Tensor a = saved.f32(prefix + "ln1", t, c);
        Tensor m = saved.f32(prefix + "mix", t, c);
        Tensor h = saved.f32(prefix + "h", t, c);
        Tensor b = saved.f32(prefix + "ln2", t, c);
        if (step) {
            ln1.forwardStep(a, x);
            mixer.forwardStep(m, a, state);
        } else {
            ln1.forward(a, x);
            mixer.forward(m, a, seqs);
        }
        if (p > 0) {
            be.dropoutForward(m, m, p, seed);
        }
        be.binary(BinaryOp.ADD, h, x, m);
        if (step) {
            ln2.forwardStep(b, h);
            channel.forwardStep(y, b);
        } else {
            ln2.forward(b, h);
            channel.forward(y, b);
        }
        if (p > 0) {
            be.dropoutForward(y, y, p, seed + 1);
        }
        be.binary(BinaryOp.ADD, y, y, h);
    }

    /** The gradient a dropped-out branch passes on: dy itself, or dy ⊙ mask/(1−p) in a buffer. */
    private Tensor throughDropout(Tensor dy, String key, long maskSeed) {
        if (dropout == 0) {
            return dy;
        }
        Tensor d = saved.zeros(key, dy.rows(), c);
        dy.device().backend().dropoutBackward(d, dy, dropout, maskSeed);
        return d;
    }

    /**
     * dx += ∂L/∂x for upstream dy. Consumes dy: it becomes ∂L/∂h (the residual stream's gradient
     * plus LayerNorm 2's), which spares a copy; the caller reuses it only after zeroing.
     */
    void backward(Tensor dx, Tensor dy, Seqs seqs) {
        int t = dy.rows();
        Backend be = dy.device().backend();
        Tensor dh = dy;
        Tensor db = saved.zeros("dln", t, c);
        channel.backward(db, throughDropout(dy, "ddrop", seed + 1));
        ln2.backward(dh, db);
        Tensor da = saved.zeros("dln", t, c);
        mixer.backward(da, throughDropout(dh, "ddrop", seed), seqs);
        ln1.backward(dx, da);
        be.binary(BinaryOp.ADD, dx, dx, dh);
    }

    @Override
    public void close() {
        ln1.close();
        mixer.close();
        ln2.close();
        channel.close();
        saved.close();
    }
}
