package org.kindling.ops;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.Comparator;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Optional;
import java.util.ServiceLoader;
import java.util.Set;

/**
 * A compute device: it allocates {@link Tensor}s, runs kernels through its {@link Backend}, and
 * keeps count of what is allocated. Closing a device with tensors still open fails, naming them,
 * so a test that closes its device proves it leaked nothing.
 */
public abstract class Device implements AutoCloseable {
    /** What kind of device: a host CPU, a CUDA GPU, or the fp64 reference ({@code reference}). */
    public enum Kind { CPU, CUDA, REFERENCE }

    private final Set<Tensor> live = Collections.synchronizedSet(Collections.newSetFromMap(new IdentityHashMap<>()));
    private long liveBytes;
    private long peakBytes;
    private long allocations;
    /** Kernel scratch handed back by {@link #scratch} users, kept for the next kernel that asks. */
    private final List<Tensor> idleScratch = new ArrayList<>();
    private boolean closed;

    /**
     * Opens the device a spec names: {@code NAME} or {@code NAME:ARGUMENT}, e.g. {@code cpu} (one
     * thread per core), {@code cpu:4} (four threads), {@code reference}, or {@code cuda:0} once a
     * provider of that name is on the classpath (see {@link DeviceProvider}).
     *
     * @throws IllegalArgumentException naming the spec: an unknown name (listing the known ones), a
     *     bad argument, or a device this process cannot open, and why
     */
    public static Device open(String spec) {
        DeviceProvider provider = provider(spec);
        provider.checkArgument(argument(spec));
        Optional<String> why = provider.unavailable();
        if (why.isPresent()) {
            throw new IllegalArgumentException("device \"" + spec + "\" is unavailable here: " + why.get());
        }
        return provider.open(argument(spec));
    }

    /**
     * Checks that a spec names a provider in this build with a valid argument, without opening or
     * asking for the hardware: a driver checks so before its tasks open the device elsewhere.
     *
     * @throws IllegalArgumentException as {@link #open}, except for availability
     */
    public static void check(String spec) {
        provider(spec).checkArgument(argument(spec));
    }

    /**
     * The provider a spec names.
     *
     * @throws IllegalArgumentException when no provider of that name is in this build, listing the known ones
     */
    public static DeviceProvider provider(String spec) {
        String name = name(spec);
        List<DeviceProvider> all = providers();
        for (DeviceProvider p : all) {
            if (p.name().equals(name)) {
                return p;
            }
        }
        throw new IllegalArgumentException("no device \"" + name + "\" in this build (spec \"" + spec + "\"); known: "
                + String.join(", ", all.stream().map(DeviceProvider::name).toList()));
    }

    /** Every provider in this build, by name; loaded from the class loader that loaded {@code Device}, as its plugins are. */
    public static List<DeviceProvider> providers() {
        List<DeviceProvider> all = new ArrayList<>();
        ServiceLoader.load(DeviceProvider.class, Device.class.getClassLoader()).forEach(all::add);
        all.sort(Comparator.comparing(DeviceProvider::name));
        return all;
    }

    /** The name part of a spec: {@code cpu} in {@code cpu:4}. */
    public static String name(String spec) {
        if (spec == null || spec.isBlank()) {
            throw new IllegalArgumentException("empty device spec; give NAME or NAME:ARGUMENT, e.g. cpu or cpu:4");
        }
        int colon = spec.indexOf(':');
        return colon < 0 ? spec : spec.substring(0, colon);
    }

    /** The argument part of a spec ({@code 4} in {@code cpu:4}), or null when it has none. */
    public static String argument(String spec) {
        int colon = spec.indexOf(':');
        return colon < 0 ? null : spec.substring(colon + 1);
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

    /**
     * The device whose storage this one's tensors live in: itself, or for a wrapper such as
     * {@link ProfilingDevice} the device it wraps; kernels that look for their own tensors compare this.
     */
    Device base() {
        return this;
    }

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
            allocations++;
        }
        return t;
    }

    /**
     * Zero-filled scratch for one kernel call, shaped {@code shape}: a view of a buffer this
     * device keeps between calls, so kernels that need scratch allocate only until the largest
     * request of each nesting depth has been seen. Closing the view hands the buffer back. A
     * zero-element request gets an empty tensor of its own, leaving the pool alone.
     */
    public Tensor scratch(DType dtype, int... shape) {
        int n = Tensor.numel(shape);
        if (n == 0) {
            if (closed) {
                throw new IllegalStateException(this + " is closed");
            }
            // No storage to speak of (every backend's empty storage holds no memory), so not counted as an allocation.
            return new Tensor(this, newStorage(dtype, 0), 0, shape, true);
        }
        Tensor backing = null;
        synchronized (this) {
            // Best fit, so a small request leaves the large buffers to the requests that need them.
            for (Tensor t : idleScratch) {
                if (t.dtype() == dtype && t.numel() >= n && (backing == null || t.numel() < backing.numel())) {
                    backing = t;
                }
            }
            if (backing != null) {
                idleScratch.remove(backing);
            } else {
                // None fits: those too small go, so the pool keeps about one buffer per nesting depth, not every size seen.
                idleScratch.removeIf(t -> {
                    if (t.dtype() == dtype) {
                        t.close();
                        return true;
                    }
                    return false;
                });
            }
        }
        if (backing == null) {
            return allocate(dtype, n).lease(this::idle, shape);
        }
        Tensor view = backing.lease(this::idle, shape);
        backend().fill(view, 0f);
        return view;
    }

    private synchronized void idle(Tensor backing) {
        if (closed) {
            backing.close();
        } else {
            idleScratch.add(backing);
        }
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

    /** Tensors allocated so far (views and reused scratch not counted): steady-state training leaves it unchanged. */
    public synchronized long allocations() {
        return allocations;
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
        synchronized (this) {
            idleScratch.forEach(Tensor::close);
            idleScratch.clear();
        }
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
