package org.kindling.models;

import java.util.List;
import org.kindling.models.channel.ChannelMixer;
import org.kindling.models.mixers.MixerState;
import org.kindling.models.mixers.TokenMixer;
import org.kindling.models.nn.Activation;
import org.kindling.models.nn.Activations;
import org.kindling.models.nn.LayerNorm;
import org.kindling.models.nn.Seqs;
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
    private final Activations acts;
    /** Saved by forward: ln1(x), mixer output, h, ln2(h), each [T, C]. */
    private final Activation a;
    private final Activation m;
    private final Activation h;
    private final Activation b;
    /** Decoding's own copies of the four, [R, C]. */
    private final Activation stepA;
    private final Activation stepM;
    private final Activation stepH;
    private final Activation stepB;
    /** Backward scratch [T, C]: a LayerNorm's input gradient, and a branch's gradient through dropout. */
    private final Activation dln;
    private final Activation ddrop;

    Block(LayerNorm ln1, TokenMixer mixer, LayerNorm ln2, ChannelMixer channel, int c, Activations acts) {
        this.ln1 = ln1;
        this.mixer = mixer;
        this.ln2 = ln2;
        this.channel = channel;
        this.c = c;
        this.acts = acts;
        a = acts.f32("ln1");
        m = acts.f32("mix");
        h = acts.f32("h");
        b = acts.f32("ln2");
        stepA = acts.scratch("block.step_ln1");
        stepM = acts.scratch("block.step_mix");
        stepH = acts.scratch("block.step_h");
        stepB = acts.scratch("block.step_ln2");
        dln = acts.scratch("block.dln");
        ddrop = acts.scratch("block.ddrop");
    }

    /** Residual dropout of the next forward and backward: probability and the seed of this block's masks. */
    private float dropout;
    private long seed;
    /** Full recomputation: the forward keeps only its input, the backward runs the forward again first. */
    private boolean recompute;
    /** Set by a forward that released its saved activations: its input, output and sequences, for the recompute. */
    private boolean released;
    private Tensor input;
    private Tensor output;

    /**
     * Full activation recomputation on or off from the next forward. The recompute repeats the
     * forward's kernels on the same input with the same dropout seeds, so the gradients are the same
     * bits as without it; only its layers' saved activations (the mixer's, the channel mixer's, the
     * LayerNorms' statistics and the block's own) are freed between the two.
     */
    void recompute(boolean on) {
        this.recompute = on;
    }

    void dropout(float p, long seed) {
        this.dropout = p;
        this.seed = seed;
    }

    /**
     * h = x + drop(mix(ln1(x))); y = h + drop(channel(ln2(h))). Under recomputation x and y must stay
     * unchanged until the backward (the model's residual-stream buffers).
     */
    void forward(Tensor y, Tensor x, Seqs seqs) {
        run(y, x, seqs);
        released = recompute;
        if (recompute) {
            input = x;
            output = y;
            releaseSaved();
        }
    }

    /** Adds every saved activation of the block and its layers to {@code out}. */
    void collectSaved(List<Activation> out) {
        acts.collectSavedWithin(out);
        ln1.collectSaved(out);
        ln2.collectSaved(out);
    }

    private void releaseSaved() {
        acts.releaseSavedWithin();
        ln1.releaseSaved();
        ln2.releaseSaved();
    }

    private void run(Tensor y, Tensor x, Seqs seqs) {
        int t = x.rows();
        Backend be = x.device().backend();
        Tensor ta = a.write(t, c);
        Tensor tm = m.write(t, c);
        Tensor th = h.write(t, c);
        Tensor tb = b.write(t, c);
        ln1.forward(ta, x);
        mixer.forward(tm, ta, seqs);
        if (dropout > 0) {
            be.dropoutForward(tm, tm, dropout, seed);
        }
        ln2.forwardAdd(th, tb, x, tm);
        channel.forwardAdd(y, tb, th, dropout, seed + 1);
    }

    /**
     * The forward for new tokens of a batch of sequences during decoding (never with dropout): its
     * own buffers, and nothing kept, so a pending backward stays intact.
     */
    void forwardStep(Tensor y, Tensor x, int[] cu, MixerState state) {
        int t = x.rows();
        Backend be = x.device().backend();
        Tensor ta = stepA.write(t, c);
        Tensor tm = stepM.write(t, c);
        Tensor th = stepH.write(t, c);
        Tensor tb = stepB.write(t, c);
        ln1.forwardStep(ta, x);
        mixer.forwardStep(tm, ta, cu, state);
        be.binary(BinaryOp.ADD, th, x, tm);
        ln2.forwardStep(tb, th);
        channel.forwardStep(y, tb);
        be.binary(BinaryOp.ADD, y, y, th);
    }

    /** The gradient a dropped-out branch passes on: dy itself, or dy ⊙ mask/(1−p) in a buffer. */
    private Tensor throughDropout(Tensor dy, long maskSeed) {
        if (dropout == 0) {
            return dy;
        }
        Tensor d = ddrop.zeros(dy.rows(), c);
        dy.device().backend().dropoutBackward(d, dy, dropout, maskSeed);
        return d;
    }

    /**
     * dx += ∂L/∂x for upstream dy. Consumes dy: it becomes ∂L/∂h (the residual stream's gradient
     * plus LayerNorm 2's), which spares a copy; the caller reuses it only after zeroing.
     */
    void backward(Tensor dx, Tensor dy, Seqs seqs) {
        if (released) {
            // Rewrites y with the bits it holds already, and every saved activation as the forward left it.
            run(output, input, seqs);
        }
        int t = dy.rows();
        Tensor dh = dy;
        Tensor db = dln.zeros(t, c);
        channel.backward(db, throughDropout(dy, seed + 1));
        ln2.backward(dh, db);
        Tensor da = dln.zeros(t, c);
        mixer.backward(da, throughDropout(dh, seed), seqs);
        ln1.backwardAdd(dx, da, dh);
        if (released) {
            releaseSaved();
            released = false;
            input = null;
            output = null;
        }
    }

    @Override
    public void close() {
        ln1.close();
        mixer.close();
        ln2.close();
        channel.close();
        acts.close();
    }
}
