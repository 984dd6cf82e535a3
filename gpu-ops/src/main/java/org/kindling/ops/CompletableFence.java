package org.kindling.ops;

import java.time.Duration;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

/**
 * A fence that whoever sees the work finish completes: a device's completion callback (a CUDA
 * host function enqueued after the kernels), or a test standing in for an asynchronous device.
 * Completing publishes every write made before it to the threads that waited.
 */
public final class CompletableFence implements Fence {
    private final CountDownLatch done = new CountDownLatch(1);

    /** Marks the fence done and wakes its waiters; later calls do nothing. */
    public void complete() {
        done.countDown();
    }

    @Override
    public boolean isDone() {
        return done.getCount() == 0;
    }

    @Override
    public boolean await(Duration timeout) {
        try {
            return done.await(timeout.toNanos(), TimeUnit.NANOSECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException("interrupted while waiting for a device fence", e);
        }
    }

    @Override
    public String toString() {
        return isDone() ? "done" : "pending";
    }
}
