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
        forward(y, x, "", (m, a) -> mixer.forward(m, a, seqs), dropout);
    }

    /** The forward for t new tokens of one sequence during incremental decoding (never with dropout). */
    void forwardStep(Tensor y, Tensor x, DecodeState state) {
        forward(y, x, "step_", (m, a) -> mixer.forwardStep(m, a, state), 0f);
    }

    /** h = x + drop(mix(ln1(x))); y = h + drop(channel(ln2(h))), with buffers named by {@code prefix}. */
    private void forward(Tensor y, Tensor x, String prefix, java.util.function.BiConsumer<Tensor, Tensor> mix, float p) {
        int t = x.rows();
        Backend be = x.device().backend();
        Tensor a = saved.f32(prefix + "ln1", t, c);
        Tensor m = saved.f32(prefix + "mix", t, c);
        Tensor h = saved.f32(prefix + "h", t, c);
        Tensor b = saved.f32(prefix + "ln2", t, c);
        ln1.forward(a, x);
        mix.accept(m, a);
        if (p > 0) {
            be.dropoutForward(m, m, p, seed);
        }
        be.binary(BinaryOp.ADD, h, x, m);
        ln2.forward(b, h);
        channel.forward(y, b);
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
