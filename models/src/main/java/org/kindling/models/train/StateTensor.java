package org.kindling.models.train;

import org.kindling.ops.HostStore;
import org.kindling.ops.Tensor;

/**
 * One named piece of state a checkpoint saves and restores — a tensor on the device or a range of a
 * {@link HostStore} — read whole for saving and written a piece at a time while a file streams in.
 */
public interface StateTensor {
    int[] shape();

    /** Every element, as host floats. */
    float[] read();

    /** Writes {@code values} at element {@code offset} of the flattened state. */
    void write(long offset, float[] values);

    /** A device tensor's elements. */
    static StateTensor of(Tensor t) {
        return new StateTensor() {
            @Override
            public int[] shape() {
                return t.shape();
            }

            @Override
            public float[] read() {
                return t.toFloatArray();
            }

            @Override
            public void write(long offset, float[] values) {
                t.reshape(t.numel()).view((int) offset, values.length).copyFrom(values);
            }
        };
    }

    /** Elements [{@code start}, start + numel(shape)) of a host store. */
    static StateTensor of(HostStore store, long start, int... shape) {
        int n = Tensor.numel(shape);
        if (start < 0 || start + n > store.length()) {
            throw new IndexOutOfBoundsException("state of " + n + " floats at " + start + " in a host store of " + store.length());
        }
        return new StateTensor() {
            @Override
            public int[] shape() {
                return shape.clone();
            }

            @Override
            public float[] read() {
                float[] out = new float[n];
                store.get(start, out, 0, n);
                return out;
            }

            @Override
            public void write(long offset, float[] values) {
                if (offset < 0 || offset + values.length > n) {
                    throw new IndexOutOfBoundsException(values.length + " floats at " + offset + " of a state of " + n);
                }
                store.put(start + offset, values, 0, values.length);
            }
        };
    }

    /** Elements [{@code start}, start + numel(shape)) of a host array. */
    static StateTensor of(float[] array, int start, int... shape) {
        int n = Tensor.numel(shape);
        java.util.Objects.checkFromIndexSize(start, n, array.length);
        return new StateTensor() {
            @Override
            public int[] shape() {
                return shape.clone();
            }

            @Override
            public float[] read() {
                return java.util.Arrays.copyOfRange(array, start, start + n);
            }

            @Override
            public void write(long offset, float[] values) {
                java.util.Objects.checkFromIndexSize(offset, values.length, n);
                System.arraycopy(values, 0, array, (int) (start + offset), values.length);
            }
        };
    }

    /**
     * State another worker holds (a ZeRO-1 shard): a restore passes over it, and reading it is an
     * error, since only a gather brings it here.
     */
    static StateTensor elsewhere(int... shape) {
        return new StateTensor() {
            @Override
            public int[] shape() {
                return shape.clone();
            }

            @Override
            public float[] read() {
                throw new IllegalStateException("this state belongs to another worker's shard (zero 1); gather it first");
            }

            @Override
            public void write(long offset, float[] values) {
                java.util.Objects.checkFromIndexSize(offset, values.length, Tensor.numel(shape));
            }
        };
    }
}
