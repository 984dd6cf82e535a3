package org.kindling.models.channel;

import org.kindling.ops.Tensor;

/** Mixes the channels of each token independently (MLP, mixture of experts, …): y[T, C] from x[T, C]. */
public interface ChannelMixer extends AutoCloseable {
    void forward(Tensor y, Tensor x);

    /** The forward for incremental decoding: keeps nothing, so a pending backward stays intact. */
    void forwardStep(Tensor y, Tensor x);

    /** dx += ∂L/∂x for upstream dy; parameter gradients +=. */
    void backward(Tensor dx, Tensor dy);

    @Override
    void close();
}
