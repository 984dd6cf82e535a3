package org.kindling.models;

import org.kindling.ops.Tensor;

/**
 * Mixes information across the tokens of each sequence (attention, state-space layers, …):
 * y[T, C] from x[T, C] over the packed sequences of a batch. A mixer never mixes across sequences.
 */
public interface TokenMixer extends AutoCloseable {
    /** y = mix(x); keeps what backward needs; x must stay unchanged until backward. */
    void forward(Tensor y, Tensor x, Seqs seqs);

    /** dx += ∂L/∂x for upstream dy; parameter gradients +=. */
    void backward(Tensor dx, Tensor dy, Seqs seqs);

    /**
     * Incremental decoding of one sequence: y[t, C] for t new tokens x[t, C] that follow the
     * tokens {@code state} has seen; the state is updated to include them. Keeps nothing for
     * backward, so a pending backward stays intact.
     */
    void forwardStep(Tensor y, Tensor x, DecodeState state);

    /** A fresh decoding state for sequences of up to {@code maxSeq} tokens. */
    DecodeState newState(int maxSeq);

    @Override
    void close();
}
