package org.kindling.ops.cuda;

import jcuda.driver.CUdeviceptr;
import org.kindling.ops.DType;
import org.kindling.ops.Storage;

/**
 * GPU memory from the device's stream-ordered allocator, zero-filled on its stream when made and
 * freed on the same stream, so a free never races a kernel still reading it.
 */
final class CudaStorage extends Storage {
    private final CudaDevice device;
    private final CUdeviceptr ptr;

    CudaStorage(CudaDevice device, DType dtype, int length) {
        super(dtype, length);
        this.device = device;
        this.ptr = length == 0 ? new CUdeviceptr() : device.allocZeroed(bytes());
    }

    CudaDevice device() {
        return device;
    }

    /** The allocation's base address; tensors add their element offset. */
    CUdeviceptr ptr() {
        return ptr;
    }

    @Override
    protected void free() {
        if (length() > 0) {
            device.free(ptr);
        }
    }
}
