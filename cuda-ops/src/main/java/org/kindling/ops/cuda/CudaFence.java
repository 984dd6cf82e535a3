package org.kindling.ops.cuda;

import java.time.Duration;
import java.util.concurrent.locks.LockSupport;
import jcuda.driver.CUevent;

/**
 * A CUDA event recorded on the device's stream. {@link #isDone} queries it without blocking;
 * {@link #await} polls it (spinning briefly, then parking 20 µs at a time) until it completes or
 * the deadline passes. The device destroys the event once it is seen complete, or at close.
 */
final class CudaFence implements org.kindling.ops.Fence {
    private static final long PARK_NANOS = 20_000;

    private final CudaDevice device;
    private final CUevent event;
    private volatile boolean done;

    CudaFence(CudaDevice device, CUevent event) {
        this.device = device;
        this.event = event;
    }

    CUevent event() {
        return event;
    }

    @Override
    public boolean isDone() {
        if (!done && device.completed(this)) {
            done = true;
        }
        return done;
    }

    /** Marks the fence done without asking the driver: the device has synchronised and destroyed the event. */
    void markDone() {
        done = true;
    }

    @Override
    public boolean await(Duration timeout) {
        long deadline = System.nanoTime() + timeout.toNanos();
        for (int spins = 0; !isDone(); spins++) {
            if (System.nanoTime() - deadline >= 0) {
                return false;
            }
            if (Thread.interrupted()) {
                Thread.currentThread().interrupt();
                throw new IllegalStateException("interrupted while waiting for a CUDA fence on " + device);
            }
            if (spins < 100) {
                Thread.onSpinWait();
            } else {
                LockSupport.parkNanos(PARK_NANOS);
            }
        }
        return true;
    }

    @Override
    public String toString() {
        return (done ? "done" : "pending") + " event on " + device;
    }
}
