package org.kindling.ops.reference;

import org.kindling.ops.Backend;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Fence;
import org.kindling.ops.Storage;

/**
 * The fp64 reference device ({@link Device#reference}): host memory, F32 tensors held in double,
 * every kernel a {@link org.kindling.ops.Reference} twin on the calling thread.
 */
public final class ReferenceDevice extends Device {
    private final ReferenceBackend backend = new ReferenceBackend();

    @Override
    public Kind kind() {
        return Kind.REFERENCE;
    }

    @Override
    public int ordinal() {
        return 0;
    }

    @Override
    public Backend backend() {
        return backend;
    }

    @Override
    public int threads() {
        return 1;
    }

    @Override
    protected Storage newStorage(DType dtype, int length) {
        return new ReferenceStorage(dtype, length);
    }

    /** Kernels have finished when they return, so a fence is done at once. */
    @Override
    public Fence fence() {
        return Fence.DONE;
    }

    @Override
    protected void shutdown() {
        // Heap storage and no threads: nothing to release beyond the tensors, which close() checks.
    }
}
