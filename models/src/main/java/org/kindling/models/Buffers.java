package org.kindling.models;

import java.util.HashMap;
import java.util.Map;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;

/**
 * A layer's activation memory, by name: a buffer is reused while its shape stays the same and
 * reallocated when a batch of another size comes, so steady-state training allocates nothing.
 */
final class Buffers implements AutoCloseable {
    private final Device dev;
    private final Map<String, Tensor> map = new HashMap<>();

    Buffers(Device dev) {
        this.dev = dev;
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
