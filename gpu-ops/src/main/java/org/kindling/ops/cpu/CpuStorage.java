package org.kindling.ops.cpu;

import org.kindling.ops.DType;
import org.kindling.ops.Storage;

/** Heap storage: a {@code float[]} (F32), {@code int[]} (I32) or {@code short[]} (BF16 bits). */
final class CpuStorage extends Storage {
    private float[] floats;
    private int[] ints;
    private short[] shorts;

    CpuStorage(DType dtype, int length) {
        super(dtype, length);
        switch (dtype) {
            case F32 -> floats = new float[length];
            case I32 -> ints = new int[length];
            case BF16 -> shorts = new short[length];
        }
    }

    float[] floats() {
        return floats;
    }

    int[] ints() {
        return ints;
    }

    short[] shorts() {
        return shorts;
    }

    @Override
    protected void free() {
        floats = null;
        ints = null;
        shorts = null;
    }
}
