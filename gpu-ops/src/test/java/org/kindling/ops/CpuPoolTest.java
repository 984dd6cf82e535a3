package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicIntegerArray;
import org.junit.jupiter.api.Test;
import org.kindling.ops.cpu.CpuPool;

class CpuPoolTest {

    @Test
    void coversTheRangeExactlyOnce() {
        try (CpuPool pool = new CpuPool(3)) {
            for (int n : new int[] {1, 2, 3, 7, 1025}) {
                AtomicIntegerArray seen = new AtomicIntegerArray(n);
                pool.parallelFor(n, 1, (lo, hi) -> {
                    for (int i = lo; i < hi; i++) {
                        seen.incrementAndGet(i);
                    }
                });
                for (int i = 0; i < n; i++) {
                    assertEquals(1, seen.get(i), "index " + i + " of " + n);
                }
            }
        }
    }

    @Test
    void nestedLoopsRunOnTheCallingThread() {
        try (CpuPool pool = new CpuPool(2)) {
            AtomicInteger inner = new AtomicInteger();
            pool.parallelFor(4, 1, (lo, hi) -> pool.parallelFor(100, 1, (a, b) -> inner.addAndGet(b - a)));
            assertEquals(200, inner.get());
        }
    }

    @Test
    void propagatesAFailureFromAnyThread() {
        try (CpuPool pool = new CpuPool(3)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> pool.parallelFor(30, 1, (lo, hi) -> {
                if (lo >= 20) {
                    throw new IllegalArgumentException("bad range " + lo);
                }
            }));
            assertEquals("bad range 20", e.getMessage());
            AtomicInteger after = new AtomicInteger();
            pool.parallelFor(30, 1, (lo, hi) -> after.addAndGet(hi - lo));
            assertEquals(30, after.get(), "the pool still works after a failure");
        }
    }

    @Test
    void needsAThread() {
        assertThrows(IllegalArgumentException.class, () -> new CpuPool(0));
    }
}
