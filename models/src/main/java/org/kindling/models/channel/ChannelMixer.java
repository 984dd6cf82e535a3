package org.kindling.models.channel;

import org.kindling.ops.Backend;
import org.kindling.ops.BinaryOp;
import org.kindling.ops.Tensor;

/** Mixes the channels of each token independently (MLP, mixture of experts, …): y[T, C] from x[T, C]. */
public interface ChannelMixer extends AutoCloseable {
    void forward(Tensor y, Tensor x);

    /**
     * A pre-LN block's channel branch with its residual: y = residual + dropout(forward(x)), the
     * mask of {@code dropoutForward} for seed (p = 0: none). A mixer may fuse its output bias,
     * the dropout and the add into one pass; the backward is {@link #backward} of the branch.
     */
    default void forwardAdd(Tensor y, Tensor x, Tensor residual, float p, long seed) {
        forward(y, x);
        Backend be = y.device().backend();
        if (p > 0) {
            be.dropoutForward(y, y, p, seed);
        }
        be.binary(BinaryOp.ADD, y, y, residual);
    }

    /** The forward for incremental decoding: keeps nothing, so a pending backward stays intact. */
    void forwardStep(Tensor y, Tensor x);

    /** dx += ∂L/∂x for upstream dy; parameter gradients +=. */
    void backward(Tensor dx, Tensor dy);

    @Override
    void close();
}
