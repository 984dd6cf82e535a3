package org.kindling.ops.reference;

import org.kindling.ops.Backend;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Fence;
import org.kindling.ops.Storage;

/**
 * The fp64 reference device: host memory, F32 tensors held in double, every kernel a
 * {@link org.kindling.ops.Reference} twin on the calling thread.
 */
public final class ReferenceDevice extends Device {
    private final ReferenceBackend backend = new ReferenceBackend();

    private ReferenceDevice() {
    }

    /**
     * The fp64 reference device: floating tensors (dtype F32) are held and computed in double, and
     * every kernel is the {@link org.kindling.ops.Reference} twin, single-threaded. Layers run on it
     * unchanged, so their gradients can be checked by finite differences in double precision. Slow; for tests.
     */
    public static ReferenceDevice open() {
        return new ReferenceDevice();
    }

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
