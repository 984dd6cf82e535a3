package org.kindling.models.nn;

import org.kindling.ops.Tensor;

/** A structured replacement for a dense {@link Linear}: y[T, OC] from x[T, IC] with its own parameters. */
public interface Projection extends AutoCloseable {
    /** y = layer(x); keeps what backward needs, so x must stay unchanged until {@link #backward}. */
    void forward(Tensor y, Tensor x);

    /** dx += ∂L/∂x (skipped when dx is null); parameter gradients accumulate. */
    void backward(Tensor dx, Tensor dy);

    /**
     * A layer on the same parameters with buffers of its own and no backward, for decoding: its
     * forward leaves this layer's pending backward intact.
     */
    Projection decodingTwin();

    @Override
    void close();
}
