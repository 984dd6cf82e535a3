package org.kindling.ops.reference;

import org.kindling.ops.DType;
import org.kindling.ops.Storage;

/** Heap storage of the reference device: F32 tensors as {@code double[]}, I32 as {@code int[]}. */
final class ReferenceStorage extends Storage {
    private double[] doubles;
    private int[] ints;

    ReferenceStorage(DType dtype, int length) {
        super(dtype, length);
        switch (dtype) {
            case F32 -> doubles = new double[length];
            case I32 -> ints = new int[length];
            case BF16 -> throw new IllegalArgumentException(
                    "the reference device holds F32 (in double) and I32 tensors; BF16 is a storage format it does not model");
        }
    }

    double[] doubles() {
        return doubles;
    }

    int[] ints() {
        return ints;
    }

    /** Eight bytes per floating element: what this device really holds. */
    @Override
    public long bytes() {
        return (long) length() * (dtype() == DType.F32 ? Double.BYTES : dtype().bytes());
    }

    @Override
    protected void free() {
        doubles = null;
        ints = null;
    }
}
