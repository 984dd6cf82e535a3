package org.kindling.models.mixers;

import org.kindling.models.nn.Seqs;
import org.kindling.ops.Tensor;

/**
 * Mixes information across the tokens of each sequence (attention, state-space layers, linear
 * attention, …): y[T, C] from x[T, C] over the packed sequences of a batch. A mixer never mixes
 * across sequences. Built from a {@link MixerSpec}; see {@link Mixers} for the registry.
 */
public interface TokenMixer extends AutoCloseable {
    /** y = mix(x); keeps what backward needs; x must stay unchanged until backward. */
    void forward(Tensor y, Tensor x, Seqs seqs);

    /** dx += ∂L/∂x for upstream dy; parameter gradients +=. */
    void backward(Tensor dx, Tensor dy, Seqs seqs);

    /** A fresh decoding state for a batch of {@code sequences} sequences, each at position 0. */
    MixerState newState(int sequences);

    /**
     * Incremental decoding of a batch: y[R, C] for new tokens x[R, C], the rows of sequence b at
     * {@code cu[b]} ≤ row &lt; {@code cu[b+1]} (host offsets; a sequence may have none), each following
     * the tokens {@code state} has seen of it; the state advances past them. Keeps nothing for
     * backward, so a pending backward stays intact.
     */
    void forwardStep(Tensor y, Tensor x, int[] cu, MixerState state);

    /** Called before each optimizer step's forward passes: for layers whose fixed tensors change during training. */
    default void startStep(long step) {
    }

    @Override
    void close();
}
