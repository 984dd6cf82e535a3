package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.kindling.ops.cpu.CpuDevice;
import org.kindling.ops.reference.ReferenceDevice;

class HostStoreTest {
    private static float[] ramp(int n, float from) {
        float[] f = new float[n];
        for (int i = 0; i < n; i++) {
            f[i] = from + i;
        }
        return f;
    }

    /** Copies that cross the boundaries of its direct buffers land where they should; a new store is zero. */
    @Test
    void putAndGetAcrossBufferBoundaries() {
        try (HostStore s = HostStore.allocate(23, 5)) {
            assertEquals(23, s.length());
            assertEquals(92, s.bytes());
            float[] all = new float[23];
            s.get(0, all, 0, 23);
            assertArrayEquals(new float[23], all);
            s.put(3, ramp(14, 100), 0, 14);
            s.put(19, ramp(6, 7), 2, 4);
            s.get(0, all, 0, 23);
            float[] want = new float[23];
            System.arraycopy(ramp(14, 100), 0, want, 3, 14);
            System.arraycopy(ramp(6, 7), 2, want, 19, 4);
            assertArrayEquals(want, all);
            float[] part = new float[10];
            s.get(4, part, 1, 8);
            assertArrayEquals(Arrays.copyOfRange(want, 4, 12), Arrays.copyOfRange(part, 1, 9));
        }
    }

    @Test
    void outOfRangeAndClosedStoresAreRefused() {
        HostStore s = HostStore.allocate(8, 3);
        IndexOutOfBoundsException e = assertThrows(IndexOutOfBoundsException.class, () -> s.put(6, new float[4], 0, 3));
        assertTrue(e.getMessage().contains("floats [6, 9) of a host store of 8"), e.getMessage());
        assertThrows(IndexOutOfBoundsException.class, () -> s.get(0, new float[2], 1, 2));
        assertThrows(IllegalArgumentException.class, () -> HostStore.allocate(-1));
        try (HostStore empty = HostStore.allocate(0)) {
            empty.put(0, new float[0], 0, 0);
        }
        s.close();
        assertTrue(s.isClosed());
        IllegalStateException closed = assertThrows(IllegalStateException.class, () -> s.get(0, new float[1], 0, 1));
        assertEquals("host store of 8 floats is closed", closed.getMessage());
    }

    /** A device's pinning sees every buffer once, is undone once on close, and a copy visits the buffers' pieces in order. */
    @Test
    void pinnedBuffersAreUnpinnedOnCloseAndVisitedPieceByPiece() {
        List<java.nio.ByteBuffer> pinned = new ArrayList<>();
        List<java.nio.ByteBuffer> unpinned = new ArrayList<>();
        HostStore.Pinning record = new HostStore.Pinning() {
            @Override
            public void pin(java.nio.ByteBuffer buffer) {
                pinned.add(buffer);
            }

            @Override
            public void unpin(java.nio.ByteBuffer buffer) {
                unpinned.add(buffer);
            }
        };
        HostStore s = HostStore.allocate(23, 5, record);
        assertEquals(5, pinned.size());
        assertEquals(List.of(20, 20, 20, 20, 12), pinned.stream().map(java.nio.ByteBuffer::capacity).toList());
        s.put(0, ramp(23, 1), 0, 23);
        List<String> pieces = new ArrayList<>();
        s.forEachPiece(3, 14, (buffer, at, index, count) -> {
            pieces.add(pinned.indexOf(buffer) + ":" + at + "+" + count + "@" + index);
            assertEquals(1 + 3 + index, buffer.order(java.nio.ByteOrder.nativeOrder()).getFloat(4 * at), 0f);
        });
        assertEquals(List.of("0:3+2@0", "1:0+5@2", "2:0+5@7", "3:0+2@12"), pieces);
        assertThrows(IndexOutOfBoundsException.class, () -> s.forEachPiece(20, 4, (b, at, i, k) -> { }));
        assertEquals(List.of(), unpinned);
        s.close();
        s.close();
        assertEquals(pinned, unpinned, "each buffer unpinned once");
        // A pin that fails undoes those before it.
        List<java.nio.ByteBuffer> undone = new ArrayList<>();
        int[] calls = {0};
        assertThrows(IllegalStateException.class, () -> HostStore.allocate(10, 4, new HostStore.Pinning() {
            @Override
            public void pin(java.nio.ByteBuffer buffer) {
                if (++calls[0] == 3) {
                    throw new IllegalStateException("out of page-locked memory");
                }
            }

            @Override
            public void unpin(java.nio.ByteBuffer buffer) {
                undone.add(buffer);
            }
        }));
        assertEquals(2, undone.size());
        try (Device cpu = CpuDevice.open(1); HostStore plain = cpu.backend().allocateStore(7)) {
            assertEquals(7, plain.length());
        }
    }

    /** A tensor view's elements round-trip through a store: the CPU backend's direct copy and the default staged one. */
    @Test
    void backendsCopyTensorViewsInAndOut() {
        try (Device cpu = CpuDevice.open(1); Device ref = ReferenceDevice.open()) {
            for (Device dev : new Device[] {cpu, ref}) {
                try (Tensor t = dev.allocate(DType.F32, 20); HostStore s = HostStore.allocate(30, 4)) {
                    t.copyFrom(ramp(20, 1));
                    dev.backend().copyToStore(s, 9, t.view(5, 11));
                    float[] got = new float[30];
                    s.get(0, got, 0, 30);
                    float[] want = new float[30];
                    System.arraycopy(ramp(20, 1), 5, want, 9, 11);
                    assertArrayEquals(want, got, dev.toString());
                    dev.backend().copyFromStore(t.view(0, 6), s, 10);
                    float[] back = t.toFloatArray();
                    assertArrayEquals(Arrays.copyOfRange(want, 10, 16), Arrays.copyOfRange(back, 0, 6), dev.toString());
                    assertArrayEquals(Arrays.copyOfRange(ramp(20, 1), 6, 20), Arrays.copyOfRange(back, 6, 20), dev.toString());
                }
            }
        }
    }
}
