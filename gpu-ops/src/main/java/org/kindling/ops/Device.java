package org.kindling.ops;

import java.util.Arrays;
import java.util.Collections;
import java.util.IdentityHashMap;
import java.util.Set;
import org.kindling.ops.cpu.CpuDevice;
import org.kindling.ops.reference.ReferenceDevice;

/**
 * A compute device: it allocates {@link Tensor}s, runs kernels through its {@link Backend}, and
 * keeps count of what is allocated. Closing a device with tensors still open fails, naming them,
 * so a test that closes its device proves it leaked nothing.
 */
public abstract class Device implements AutoCloseable {
    /** What kind of device: a host CPU, a CUDA GPU, or the fp64 reference ({@link #reference}). */
    public enum Kind { CPU, CUDA, REFERENCE }

    private final Set<Tensor> live = Collections.synchronizedSet(Collections.newSetFromMap(new IdentityHashMap<>()));
    private long liveBytes;
    private long peakBytes;
    private boolean closed;

    /** A CPU device whose kernels run on {@code threads} threads. */
    public static CpuDevice cpu(int threads) {
        return new CpuDevice(threads);
    }

    /** A CPU device with one thread per core this process may use. */
    public static CpuDevice cpu() {
        return new CpuDevice(Runtime.getRuntime().availableProcessors());
    }

    /**
     * The fp64 reference device: floating tensors (dtype F32) are held and computed in double, and
     * every kernel is the {@link Reference} twin, single-threaded. Layers run on it unchanged, so
     * their gradients can be checked by finite differences in double precision. Slow; for tests.
     */
    public static ReferenceDevice reference() {
        return new ReferenceDevice();
    }

    public abstract Kind kind();

    /** Device ordinal (0 for the CPU). */
    public abstract int ordinal();

    public abstract Backend backend();

    /** Threads (CPU) or streams the backend runs kernels on. */
    public abstract int threads();

    /**
     * A fence recorded after every kernel issued on this device so far: once it is done, their
     * outputs may be read from any thread. Synchronous devices return {@link Fence#DONE}.
     */
    public abstract Fence fence();

    /** Makes uninitialized-but-zeroed storage for {@code length} elements. */
    protected abstract Storage newStorage(DType dtype, int length);

    /** Releases the device's own resources (thread pools, contexts). */
    protected abstract void shutdown();

    /** A new zero-filled tensor owned by the caller. */
    public Tensor allocate(DType dtype, int... shape) {
        if (closed) {
            throw new IllegalStateException(this + " is closed");
        }
        Tensor t = new Tensor(this, newStorage(dtype, Tensor.numel(shape)), 0, shape, true);
        synchronized (this) {
            live.add(t);
            liveBytes += t.ownedBytes();
            peakBytes = Math.max(peakBytes, liveBytes);
        }
        return t;
    }

    /** A new F32 tensor holding a copy of {@code values}, shaped {@code shape}. */
    public Tensor fromFloats(float[] values, int... shape) {
        if (Tensor.numel(shape) != values.length) {
            throw new IllegalArgumentException(values.length + " values do not fill shape " + Arrays.toString(shape));
        }
        return allocate(DType.F32, shape).copyFrom(values);
    }

    /** A new I32 tensor holding a copy of {@code values}, shaped {@code shape}. */
    public Tensor fromInts(int[] values, int... shape) {
        if (Tensor.numel(shape) != values.length) {
            throw new IllegalArgumentException(values.length + " values do not fill shape " + Arrays.toString(shape));
        }
        return allocate(DType.I32, shape).copyFrom(values);
    }

    synchronized void released(Tensor t) {
        if (live.remove(t)) {
            liveBytes -= t.ownedBytes();
        }
    }

    /** Bytes held by open tensors. */
    public synchronized long liveBytes() {
        return liveBytes;
    }

    /** Most bytes ever held at once by open tensors; {@link #resetPeak} starts a new measurement. */
    public synchronized long peakBytes() {
        return peakBytes;
    }

    public synchronized void resetPeak() {
        peakBytes = liveBytes;
    }

    /**
     * Shuts the device down.
     *
     * @throws IllegalStateException if tensors allocated here are still open (a leak)
     */
    @Override
    public void close() {
        if (closed) {
            return;
        }
        closed = true;
        shutdown();
        synchronized (this) {
            if (!live.isEmpty()) {
                StringBuilder sb = new StringBuilder();
                int shown = 0;
                synchronized (live) {
                    for (Tensor t : live) {
                        if (shown++ == 5) {
                            sb.append(", …");
                            break;
                        }
                        sb.append(shown == 1 ? "" : ", ").append(t.dtype()).append(Arrays.toString(t.shape()));
                    }
                }
                throw new IllegalStateException(this + " closed with " + live.size() + " open tensors ("
                        + liveBytes + " bytes): " + sb);
            }
        }
    }

    @Override
    public String toString() {
        return switch (kind()) {
            case CPU -> "cpu";
            case CUDA -> "cuda:" + ordinal();
            case REFERENCE -> "reference";
        };
    }
}
