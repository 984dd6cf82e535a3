package org.kindling.ops.cpu;

import java.util.concurrent.atomic.AtomicInteger;
import org.kindling.ops.DType;
import org.kindling.ops.Tensor;

/**
 * Work items handed out to a pool's threads, each thread with its own slice of one scratch tensor
 * on the device (so the device's peak counts it). Items are taken in order from a shared counter;
 * a kernel stays deterministic as long as an item's arithmetic does not depend on which thread
 * runs it.
 */
final class CpuItems {
    private CpuItems() {
    }

    @FunctionalInterface
    interface Body {
        void run(int item, float[] ws, int wsOff);
    }

    static void run(CpuDevice device, CpuPool pool, int items, int scratchPerWorker, Body body) {
        int workers = Math.max(1, Math.min(pool.threads(), items));
        AtomicInteger next = new AtomicInteger();
        try (Tensor scratch = device.allocate(DType.F32, workers, scratchPerWorker)) {
            float[] ws = ((CpuStorage) scratch.storage()).floats();
            pool.parallelFor(workers, 1, (lo, hi) -> {
                for (int it = next.getAndIncrement(); it < items; it = next.getAndIncrement()) {
                    body.run(it, ws, lo * scratchPerWorker);
                }
            });
        }
    }
}
