package org.kindling.models;

import java.util.HashMap;
import java.util.Map;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;

/**
 * A layer's activation memory, by name: a buffer is reused while its shape stays the same and
 * reallocated when a batch of another size comes, so steady-state training allocates nothing.
 * The forward pass writes saved activations through {@link #f32}/{@link #get}; the backward pass
 * reads them through {@link #saved}, which fails unless the forward wrote that buffer at that shape.
 */
final class Buffers implements AutoCloseable {
    private final Device dev;
    private final String owner;
    private final Map<String, Tensor> map = new HashMap<>();

    Buffers(Device dev) {
        this(dev, "layer");
    }

    /** @param owner the layer's name, for errors */
    Buffers(Device dev, String owner) {
        this.dev = dev;
        this.owner = owner;
    }

    Device device() {
        return dev;
    }

    /** The buffer {@code key} shaped {@code shape}; its contents are whatever was last written. */
    Tensor get(String key, DType dtype, int... shape) {
        Tensor t = map.get(key);
        if (t != null && t.dtype() == dtype && java.util.Arrays.equals(t.shape(), shape)) {
            return t;
        }
        if (t != null) {
            t.close();
        }
        t = dev.allocate(dtype, shape);
        map.put(key, t);
        return t;
    }

    /** A saved activation as the last forward wrote it: an error if it wrote none, or one of another shape. */
    Tensor saved(String key, DType dtype, int... shape) {
        Tensor t = map.get(key);
        if (t == null || t.dtype() != dtype || !java.util.Arrays.equals(t.shape(), shape)) {
            throw new IllegalStateException(owner + ": saved activation '" + key + "' " + dtype + java.util.Arrays.toString(shape)
                    + (t == null ? " was never written by a forward pass"
                            : " was last written as " + t.dtype() + java.util.Arrays.toString(t.shape())));
        }
        return t;
    }

    Tensor saved(String key, int... shape) {
        return saved(key, DType.F32, shape);
    }

    Tensor f32(String key, int... shape) {
        return get(key, DType.F32, shape);
    }

    /** Like {@link #f32} but zero-filled: for gradients, which backward kernels accumulate into. */
    Tensor zeros(String key, int... shape) {
        Tensor t = f32(key, shape);
        dev.backend().fill(t, 0f);
        return t;
    }

    @Override
    public void close() {
        map.values().forEach(Tensor::close);
        map.clear();
    }
}
