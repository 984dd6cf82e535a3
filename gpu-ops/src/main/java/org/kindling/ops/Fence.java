package org.kindling.ops;

import java.time.Duration;

/**
 * A point in a device's kernel stream, recorded by {@link Device#fence}: it is done once every
 * kernel issued on that device before it was recorded has finished writing its outputs. An
 * asynchronous device (CUDA) returns from a kernel launch before the kernel runs, so whoever
 * reads a tensor from another thread, or copies it to the host outside the stream, waits on the
 * fence of the kernels that wrote it first. Every wait has a deadline.
 */
public interface Fence {
    /** The fence of a synchronous device: its kernels have finished when they return. */
    Fence DONE = new Fence() {
        @Override
        public boolean isDone() {
            return true;
        }

        @Override
        public boolean await(Duration timeout) {
            return true;
        }

        @Override
        public String toString() {
            return "done";
        }
    };

    /** Whether the kernels before this fence have finished; never blocks. */
    boolean isDone();

    /**
     * Blocks until the fence is done or {@code timeout} has passed.
     *
     * @return whether it is done
     * @throws IllegalStateException if the thread is interrupted while waiting (the flag is kept)
     */
    boolean await(Duration timeout);

    /**
     * {@link #await}, failing when the fence is not done within {@code timeout} with an error that
     * names {@code what} (the buffers the caller was about to read).
     */
    default void awaitOrFail(Duration timeout, String what) {
        if (!await(timeout)) {
            throw new IllegalStateException(what + " not ready within " + timeout.toMillis()
                    + " ms: the kernels writing them have not finished");
        }
    }
}
