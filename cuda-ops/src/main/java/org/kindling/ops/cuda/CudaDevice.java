package org.kindling.ops.cuda;

import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import jcuda.driver.CUcontext;
import jcuda.driver.CUdevice;
import jcuda.driver.CUdeviceptr;
import jcuda.driver.CUevent;
import jcuda.driver.CUevent_flags;
import jcuda.driver.CUresult;
import jcuda.driver.CUstream;
import jcuda.driver.CUstream_flags;
import jcuda.driver.JCudaDriver;
import org.kindling.ops.Backend;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Fence;
import org.kindling.ops.HostFallback;
import org.kindling.ops.KernelChecks;
import org.kindling.ops.Storage;
import org.kindling.ops.Tensor;

/**
 * One GPU: its primary context, one blocking stream that every kernel, allocation and free goes
 * through in order, the kernels of this jar's fatbin, and a CPU device for the operations that
 * have no CUDA kernel yet ({@link HostFallback}). Host copies are synchronous driver copies,
 * which on a blocking stream wait for the kernels issued before them, so the host never reads a
 * buffer a kernel is still writing.
 */
final class CudaDevice extends Device {
    private final int ordinal;
    private final CUdevice cuDevice = new CUdevice();
    private final CUcontext context = new CUcontext();
    private final CUstream stream = new CUstream();
    private final CudaKernels kernels;
    private final Device host;
    private final Backend backend;
    private final Set<CudaFence> pending = new HashSet<>();
    private volatile boolean shutDown;

    private CudaDevice(int ordinal, byte[] fatbin) {
        this.ordinal = ordinal;
        Cuda.check(JCudaDriver.cuDeviceGet(cuDevice, ordinal), "cuDeviceGet(" + ordinal + ")");
        Cuda.check(JCudaDriver.cuDevicePrimaryCtxRetain(context, cuDevice), "cuDevicePrimaryCtxRetain(" + ordinal + ")");
        boolean streamMade = false;
        CudaKernels k = null;
        Device h = null;
        Backend b;
        try {
            makeCurrent();
            Cuda.check(JCudaDriver.cuStreamCreate(stream, CUstream_flags.CU_STREAM_DEFAULT), "cuStreamCreate");
            streamMade = true;
            k = new CudaKernels(this, fatbin);
            h = Device.open("cpu");
            b = HostFallback.backend(this, k, h);
        } catch (RuntimeException e) {
            // What was built so far goes back before the context is released.
            if (h != null) {
                h.close();
            }
            if (k != null) {
                k.unload();
            }
            if (streamMade) {
                JCudaDriver.cuStreamDestroy(stream);
            }
            JCudaDriver.cuDevicePrimaryCtxRelease(cuDevice);
            throw e;
        }
        this.kernels = k;
        this.host = h;
        this.backend = b;
    }

    /** Opens GPU {@code ordinal} with the kernels of {@code fatbin}; the caller checked that it exists. */
    static CudaDevice open(int ordinal, byte[] fatbin) {
        return new CudaDevice(ordinal, fatbin);
    }

    /** Makes this device's context current on the calling thread (cheap; every entry point calls it). */
    void makeCurrent() {
        Cuda.check(JCudaDriver.cuCtxSetCurrent(context), "cuCtxSetCurrent");
    }

    CUstream stream() {
        return stream;
    }

    /** The CPU device that operations without a CUDA kernel run on. */
    Device host() {
        return host;
    }

    CUdeviceptr allocZeroed(long bytes) {
        makeCurrent();
        CUdeviceptr ptr = new CUdeviceptr();
        Cuda.check(JCudaDriver.cuMemAllocAsync(ptr, bytes, stream), "cuMemAllocAsync of " + bytes + " bytes on " + this);
        Cuda.check(JCudaDriver.cuMemsetD8Async(ptr, (byte) 0, bytes, stream), "cuMemsetD8Async");
        return ptr;
    }

    /** {@code t}'s storage, checked to hold {@code want} and to live on this device; errors name the operand. */
    CudaStorage storage(Tensor t, DType want, String what) {
        CudaStorage s = KernelChecks.storage(t, want, CudaStorage.class, toString(), what);
        if (s.device() != this) {
            throw new IllegalArgumentException(what + " is not on " + this + ": " + t);
        }
        return s;
    }

    void free(CUdeviceptr ptr) {
        if (shutDown) {
            return; // the context's memory went with it
        }
        makeCurrent();
        Cuda.check(JCudaDriver.cuMemFreeAsync(ptr, stream), "cuMemFreeAsync");
    }

    @Override
    public Kind kind() {
        return Kind.CUDA;
    }

    @Override
    public int ordinal() {
        return ordinal;
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
    public Fence fence() {
        makeCurrent();
        synchronized (pending) {
            // Fences nobody waited on would pile up: drop those already complete.
            for (CudaFence f : new ArrayList<>(pending)) {
                f.isDone();
            }
            CUevent event = new CUevent();
            Cuda.check(JCudaDriver.cuEventCreate(event, CUevent_flags.CU_EVENT_DISABLE_TIMING), "cuEventCreate");
            Cuda.check(JCudaDriver.cuEventRecord(event, stream), "cuEventRecord");
            CudaFence f = new CudaFence(this, event);
            pending.add(f);
            return f;
        }
    }

    /** Whether {@code f}'s event has completed; destroys the event when it has. */
    boolean completed(CudaFence f) {
        synchronized (pending) {
            if (shutDown || !pending.contains(f)) {
                return true;
            }
            makeCurrent();
            int r = JCudaDriver.cuEventQuery(f.event());
            if (r == CUresult.CUDA_ERROR_NOT_READY) {
                return false;
            }
            Cuda.check(r, "cuEventQuery");
            pending.remove(f);
            Cuda.check(JCudaDriver.cuEventDestroy(f.event()), "cuEventDestroy");
            return true;
        }
    }

    @Override
    protected Storage newStorage(DType dtype, int length) {
        return new CudaStorage(this, dtype, length);
    }

    @Override
    protected void shutdown() {
        List<RuntimeException> errors = new ArrayList<>();
        try {
            makeCurrent();
            Cuda.check(JCudaDriver.cuStreamSynchronize(stream), "cuStreamSynchronize");
            synchronized (pending) {
                for (CudaFence f : pending) {
                    JCudaDriver.cuEventDestroy(f.event());
                    f.markDone();
                }
                pending.clear();
            }
            // The module and the kernels' own buffer are freed while frees still reach the device.
            kernels.unload();
            synchronized (pending) {
                shutDown = true;
            }
            Cuda.check(JCudaDriver.cuStreamDestroy(stream), "cuStreamDestroy");
        } catch (RuntimeException e) {
            errors.add(e);
        } finally {
            shutDown = true;
            JCudaDriver.cuDevicePrimaryCtxRelease(cuDevice);
            try {
                host.close();
            } catch (RuntimeException e) {
                errors.add(e);
            }
        }
        if (!errors.isEmpty()) {
            RuntimeException first = errors.get(0);
            errors.subList(1, errors.size()).forEach(first::addSuppressed);
            throw first;
        }
    }
}
