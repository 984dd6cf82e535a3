package org.kindling.ops.cpu;

import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.ThreadFactory;
import java.util.concurrent.atomic.AtomicInteger;
import org.kindling.ops.DType;
import org.kindling.ops.Tensor;

/**
 * A fixed set of threads for data-parallel loops. Work is split into at most {@code threads}
 * contiguous ranges whose bounds depend only on the range length and the thread count, so a
 * kernel that writes each output from one range is deterministic for a given thread count.
 * Loops started from inside a loop run on the calling thread.
 */
public final class CpuPool implements AutoCloseable {
    /** The body of a parallel loop over {@code [start, end)}. */
    @FunctionalInterface
    public interface Range {
        void run(int start, int end);
    }

    private static final AtomicInteger POOLS = new AtomicInteger();
    private static final ThreadLocal<Boolean> INSIDE = ThreadLocal.withInitial(() -> false);

    private final int threads;
    private final ExecutorService workers;

    public CpuPool(int threads) {
        if (threads < 1) {
            throw new IllegalArgumentException("a CPU pool needs at least 1 thread, got " + threads);
        }
        this.threads = threads;
        int id = POOLS.incrementAndGet();
        AtomicInteger n = new AtomicInteger();
        ThreadFactory factory = r -> {
            Thread t = new Thread(() -> {
                INSIDE.set(true);
                r.run();
            }, "kindling-cpu-" + id + "-" + n.incrementAndGet());
            t.setDaemon(true);
            return t;
        };
        this.workers = threads > 1 ? Executors.newFixedThreadPool(threads - 1, factory) : null;
    }

    public int threads() {
        return threads;
    }

    /**
     * Runs {@code body} over {@code [0, n)} split into at most {@code threads} ranges of at least
     * {@code grain} elements each (the last may be shorter); the caller runs the first range.
     */
    public void parallelFor(int n, int grain, Range body) {
        if (n <= 0) {
            return;
        }
        int chunks = (int) Math.min(threads, Math.max(1, n / (long) Math.max(1, grain)));
        if (chunks == 1 || INSIDE.get()) {
            body.run(0, n);
            return;
        }
        @SuppressWarnings("unchecked")
        Future<?>[] futures = new Future<?>[chunks - 1];
        for (int i = 1; i < chunks; i++) {
            int start = bound(n, chunks, i);
            int end = bound(n, chunks, i + 1);
            futures[i - 1] = workers.submit(() -> body.run(start, end));
        }
        Throwable failure = null;
        INSIDE.set(true);
        try {
            body.run(0, bound(n, chunks, 1));
        } catch (Throwable t) {
            failure = t;
        } finally {
            INSIDE.set(false);
        }
        for (Future<?> f : futures) {
            try {
                f.get();
            } catch (java.util.concurrent.ExecutionException e) {
                if (failure == null) {
                    failure = e.getCause();
                }
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                if (failure == null) {
                    failure = e;
                }
            }
        }
        if (failure instanceof RuntimeException re) {
            throw re;
        }
        if (failure instanceof Error err) {
            throw err;
        }
        if (failure != null) {
            throw new IllegalStateException("parallel loop interrupted", failure);
        }
    }

    /** The body of one work item of {@link #runItems}: {@code ws[wsOff…]} is its worker's scratch. */
    @FunctionalInterface
    interface Item {
        void run(int item, float[] ws, int wsOff);
    }

    /**
     * Runs items 0..items−1 on up to {@code threads} workers, each taking the next unclaimed item
     * and owning a slice of {@code scratchPerWorker} floats of one {@link org.kindling.ops.Device#scratch}
     * tensor of {@code device} (so the device's peak counts it, and repeated calls reuse it). An
     * item's result must not depend on which worker runs it.
     */
    void runItems(CpuDevice device, int items, int scratchPerWorker, Item body) {
        int workers = Math.max(1, Math.min(threads, items));
        AtomicInteger next = new AtomicInteger();
        try (Tensor scratch = device.scratch(DType.F32, workers, scratchPerWorker)) {
            float[] ws = ((CpuStorage) scratch.storage()).floats();
            parallelFor(workers, 1, (lo, hi) -> {
                for (int it = next.getAndIncrement(); it < items; it = next.getAndIncrement()) {
                    body.run(it, ws, lo * scratchPerWorker);
                }
            });
        }
    }

    private static int bound(int n, int chunks, int i) {
        return (int) ((long) n * i / chunks);
    }

    @Override
    public void close() {
        if (workers != null) {
            workers.shutdownNow();
        }
    }
}
