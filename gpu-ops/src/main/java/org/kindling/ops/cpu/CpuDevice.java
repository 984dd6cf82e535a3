package org.kindling.ops.cpu;

import org.kindling.ops.Backend;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Fence;
import org.kindling.ops.Storage;

/** The host CPU: heap storage and Java kernels on a pool of {@code threads} threads. */
public final class CpuDevice extends Device {
    private final CpuPool pool;
    private final CpuBackend backend;

    private CpuDevice(int threads) {
        this.pool = new CpuPool(threads);
        this.backend = new CpuBackend(this, pool);
    }

    /** A CPU device whose kernels run on {@code threads} threads. */
    public static CpuDevice open(int threads) {
        return new CpuDevice(threads);
    }

    /** A CPU device with one thread per core this process may use. */
    public static CpuDevice open() {
        return new CpuDevice(Runtime.getRuntime().availableProcessors());
    }

    @Override
    public Kind kind() {
        return Kind.CPU;
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
        return pool.threads();
    }

    @Override
    protected Storage newStorage(DType dtype, int length) {
        return new CpuStorage(dtype, length);
    }

    /** Kernels have finished when they return, so a fence is done at once. */
    @Override
    public Fence fence() {
        return Fence.DONE;
    }

    @Override
    protected void shutdown() {
        pool.close();
    }
}
