package org.kindling.models.nn;

import java.util.Arrays;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;

/**
 * One activation buffer of a layer, declared as a field with its shape in the layer's javadoc
 * (as llm.c declares its activations). It is reused while its shape stays the same and
 * reallocated when a batch of another size comes, so steady-state training allocates nothing. The
 * forward pass writes it through {@link #write}; the backward pass reads it through {@link #saved},
 * which fails unless the forward wrote it at that shape.
 */
public final class Activation implements AutoCloseable {
    private final Device dev;
    private final String name;
    private final DType dtype;
    private Tensor t;

    Activation(Device dev, String name, DType dtype) {
        this.dev = dev;
        this.name = name;
        this.dtype = dtype;
    }

    /** The buffer at {@code shape}; its contents are whatever was last written. */
    public Tensor write(int... shape) {
        if (t != null && Arrays.equals(t.shape(), shape)) {
            return t;
        }
        if (t != null) {
            t.close();
        }
        t = dev.allocate(dtype, shape);
        return t;
    }

    /** Like {@link #write} but zero-filled: for gradients, which backward kernels accumulate into. */
    public Tensor zeros(int... shape) {
        Tensor z = write(shape);
        dev.backend().fill(z, 0f);
        return z;
    }

    /** The buffer as the last forward wrote it: an error if it wrote none, or one of another shape. */
    public Tensor saved(int... shape) {
        if (t == null || !Arrays.equals(t.shape(), shape)) {
            throw new IllegalStateException("saved activation " + name + " " + dtype + Arrays.toString(shape)
                    + (t == null ? " was never written by a forward pass" : " was last written as " + Arrays.toString(t.shape())));
        }
        return t;
    }

    @Override
    public void close() {
        if (t != null) {
            t.close();
            t = null;
        }
    }
}
