package org.kindling.models.nn;

import org.kindling.ops.Tensor;

/** A structured replacement for a dense {@link Linear}: y[T, OC] from x[T, IC] with its own parameters. */
public interface Projection extends AutoCloseable {
    /** y = layer(x); keeps what backward needs, so x must stay unchanged until {@link #backward}. */
    void forward(Tensor y, Tensor x);

    /** dx += ∂L/∂x (skipped when dx is null); parameter gradients accumulate. */
    void backward(Tensor dx, Tensor dy);

    /** Like {@link #backward} but dx = ∂L/∂x, overwriting it. */
    default void backwardOverwrite(Tensor dx, Tensor dy) {
        dx.device().backend().fill(dx, 0f);
        backward(dx, dy);
    }

    /** Output width OC. */
    int out();

    /**
     * A layer on the same parameters with buffers of its own and no backward, for decoding: its
     * forward leaves this layer's pending backward intact.
     */
    Projection decodingTwin();

    @Override
    void close();

    /** A dense {@link Linear} as a projection; its decoding twin applies it without saving. */
    static Projection dense(Linear lin) {
        return new Projection() {
            @Override
            public void forward(Tensor y, Tensor x) {
                lin.forward(y, x);
            }

            @Override
            public void backward(Tensor dx, Tensor dy) {
                lin.backward(dx, dy);
            }

            @Override
            public void backwardOverwrite(Tensor dx, Tensor dy) {
                lin.backwardOverwrite(dx, dy);
            }

            @Override
            public int out() {
                return lin.out;
            }

            @Override
            public Projection decodingTwin() {
                Projection owner = this;
                return new Projection() {
                    @Override
                    public void forward(Tensor y, Tensor x) {
                        lin.apply(y, x);
                    }

                    @Override
                    public void backward(Tensor dx, Tensor dy) {
                        throw new IllegalStateException("a decoding twin has no backward");
                    }

                    @Override
                    public int out() {
                        return owner.out();
                    }

                    @Override
                    public Projection decodingTwin() {
                        return owner.decodingTwin();
                    }

                    @Override
                    public void close() {
                    }
                };
            }

            @Override
            public void close() {
            }
        };
    }
}
