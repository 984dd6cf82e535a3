package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.Duration;
import org.junit.jupiter.api.Test;
import org.kindling.ops.cpu.CpuDevice;
import org.kindling.ops.reference.ReferenceDevice;

/** Synchronous devices hand out done fences; a completable fence waits, times out and publishes writes. */
class FenceTest {
    @Test
    void synchronousDevicesFenceDoneAtOnce() {
        try (Device cpu = CpuDevice.open(1); Device ref = ReferenceDevice.open()) {
            assertSame(Fence.DONE, cpu.fence());
            assertSame(Fence.DONE, ref.fence());
            assertTrue(cpu.fence().await(Duration.ZERO));
        }
    }

    @Test
    void aCompletableFenceWaitsForItsCompletion() throws Exception {
        CompletableFence f = new CompletableFence();
        int[] written = new int[1];
        Thread writer = new Thread(() -> {
            try {
                Thread.sleep(100);
            } catch (InterruptedException e) {
                return;
            }
            written[0] = 42;
            f.complete();
        });
        writer.start();
        assertFalse(f.isDone());
        assertTrue(f.await(Duration.ofSeconds(30)));
        assertEquals(42, written[0], "a write before complete() is seen after await");
        writer.join();
    }

    @Test
    void aFenceThatNeverCompletesFailsNamingWhatWaitedWithinItsDeadline() {
        CompletableFence f = new CompletableFence();
        long t0 = System.nanoTime();
        assertFalse(f.await(Duration.ofMillis(50)));
        IllegalStateException e = assertThrows(IllegalStateException.class,
                () -> f.awaitOrFail(Duration.ofMillis(50), "gradients of [w]"));
        assertEquals("gradients of [w] not ready within 50 ms: the kernels writing them have not finished", e.getMessage());
        assertTrue((System.nanoTime() - t0) / 1e9 < 10);
    }
}
