package org.kindling.models;

import java.util.Arrays;
import java.util.List;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.mixers.MixerState;
import org.kindling.ops.Tensor;

/**
 * Incremental decoding of a batch of sequences: owns each sequence's position and every layer's
 * state (attention's KV cache, a recurrent mixer's constant-size state). Each {@link #step} feeds
 * any number of new tokens to any of the sequences — a prompt prefill, or one sampled token each —
 * as one batch through the model. Keeps nothing for backward, so a pending backward stays intact.
 *
 * <p>A deep equilibrium model ({@link Gpt#equilibrium}) has no incremental state: the session keeps
 * each sequence's tokens and every step runs the full forward over the prefix of each sequence that
 * got tokens, so decoding is the full forward (causality makes each position's logits those of the
 * whole sequence, to within the solver's tolerance); that forward overwrites the saved
 * activations, so for such a model a pending backward does not survive a step.
 */
public final class DecodeSession implements AutoCloseable {
    private final Gpt model;
    private final List<MixerState> states;
    private final int[] lengths;
    /** Each sequence's tokens so far, for a deep equilibrium model; null otherwise. */
    private final int[][] prefixes;

    DecodeSession(Gpt model, List<MixerState> states, int sequences) {
        this.model = model;
        this.states = states;
        this.lengths = new int[sequences];
        this.prefixes = model.equilibrium() ? new int[sequences][0] : null;
    }

    public int sequences() {
        return lengths.length;
    }

    /** Tokens sequence b has seen. */
    public int length(int b) {
        return lengths[b];
    }

    /** Bytes the layers' decoding states hold now: growing with the context for attention, constant for recurrent mixers. */
    public long stateBytes() {
        return states.stream().mapToLong(MixerState::bytes).sum();
    }

    /**
     * Feeds {@code tokens[b]} (possibly none) to each sequence b and returns, for each sequence that
     * got tokens, the logits [V] after its last new token (null for the others).
     */
    public float[][] step(int[][] tokens) {
        if (tokens.length != lengths.length) {
            throw new IllegalArgumentException("step got tokens for " + tokens.length + " sequences; the session has "
                    + lengths.length);
        }
        int[] cu = new int[tokens.length + 1];
        for (int b = 0; b < tokens.length; b++) {
            cu[b + 1] = cu[b] + tokens[b].length;
            model.checkLength(lengths[b] + tokens[b].length, "sequence " + b + " of the decoding session");
        }
        if (cu[tokens.length] == 0) {
            throw new IllegalArgumentException("step needs at least one token");
        }
        int[] flat = new int[cu[tokens.length]];
        int[] pos = new int[flat.length];
        for (int b = 0; b < tokens.length; b++) {
            for (int i = 0; i < tokens[b].length; i++) {
                flat[cu[b] + i] = tokens[b][i];
                pos[cu[b] + i] = lengths[b] + i;
            }
        }
        if (prefixes != null) {
            return stepFull(tokens);
        }
        Tensor logits = model.forwardStep(flat, pos, cu, states);
        int v = model.config().vocab();
        float[][] out = new float[tokens.length][];
        for (int b = 0; b < tokens.length; b++) {
            lengths[b] += tokens[b].length;
            if (tokens[b].length > 0) {
                out[b] = logits.view((cu[b + 1] - 1) * v, v).toFloatArray();
            }
        }
        return out;
    }

    /**
     * A deep equilibrium model's step: the full forward over each prefix that got tokens, one sequence at a time, so a
     * sequence's logits do not depend on what else is in the batch (the solver stops on a residual over its whole input).
     */
    private float[][] stepFull(int[][] tokens) {
        int v = model.config().vocab();
        float[][] out = new float[tokens.length][];
        for (int b = 0; b < tokens.length; b++) {
            if (tokens[b].length > 0) {
                prefixes[b] = concat(prefixes[b], tokens[b]);
                lengths[b] += tokens[b].length;
                out[b] = model.logits(TokenBatch.single(prefixes[b])).view((prefixes[b].length - 1) * v, v).toFloatArray();
            }
        }
        return out;
    }

    private static int[] concat(int[] a, int[] b) {
        int[] out = Arrays.copyOf(a, a.length + b.length);
        System.arraycopy(b, 0, out, a.length, b.length);
        return out;
    }

    /** Logits [n, V] after each of n new tokens of a single-sequence session: for scoring a sequence as it is decoded. */
    public float[] stepAll(int[] tokens) {
        if (lengths.length != 1) {
            throw new IllegalArgumentException("stepAll is for single-sequence sessions; this one has " + lengths.length);
        }
        model.checkLength(lengths[0] + tokens.length, "the decoded sequence");
        if (tokens.length == 0) {
            throw new IllegalArgumentException("step needs at least one token");
        }
        int[] pos = new int[tokens.length];
        for (int i = 0; i < pos.length; i++) {
            pos[i] = lengths[0] + i;
        }
        if (prefixes != null) {
            int before = lengths[0];
            prefixes[0] = concat(prefixes[0], tokens);
            lengths[0] += tokens.length;
            int v = model.config().vocab();
            return model.logits(TokenBatch.single(prefixes[0])).view(before * v, tokens.length * v).toFloatArray();
        }
        float[] out = model.forwardStep(tokens, pos, new int[] {0, tokens.length}, states).toFloatArray();
        lengths[0] += tokens.length;
        return out;
    }

    @Override
    public void close() {
        states.forEach(MixerState::close);
    }
}
