package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;
import org.kindling.ops.cpu.CpuDevice;

class TensorTest {

    @Test
    void allocatesZeroedAndRoundTripsHostData() {
        try (Device dev = CpuDevice.open(2)) {
            try (Tensor t = dev.allocate(DType.F32, 2, 3)) {
                assertArrayEquals(new float[6], t.toFloatArray());
                assertArrayEquals(new int[] {2, 3}, t.shape());
                assertEquals(2, t.rows());
                assertEquals(3, t.cols());
                assertEquals(3, t.dim(-1));
                float[] v = {1, 2, 3, 4, 5, 6};
                t.copyFrom(v);
                assertArrayEquals(v, t.toFloatArray());
            }
            try (Tensor ids = dev.fromInts(new int[] {4, -1, 7}, 3)) {
                assertArrayEquals(new int[] {4, -1, 7}, ids.toIntArray());
            }
            assertEquals(0, dev.liveBytes());
        }
    }

    @Test
    void viewsShareStorageAndCheckBounds() {
        try (Device dev = CpuDevice.open(1); Tensor t = dev.fromFloats(new float[] {0, 1, 2, 3, 4, 5}, 6)) {
            Tensor v = t.view(2, 2, 2);
            assertArrayEquals(new float[] {2, 3, 4, 5}, v.toFloatArray());
            v.copyFrom(new float[] {9, 9, 9, 9});
            assertArrayEquals(new float[] {0, 1, 9, 9, 9, 9}, t.toFloatArray());
            Tensor inner = v.view(1, 2);
            assertArrayEquals(new float[] {9, 9}, inner.toFloatArray());
            assertThrows(IndexOutOfBoundsException.class, () -> t.view(5, 2));
            assertThrows(IllegalArgumentException.class, () -> t.reshape(4, 2));
            assertArrayEquals(new int[] {3, 2}, t.reshape(3, 2).shape());
            v.close(); // a view owns nothing
            assertEquals(6, t.toFloatArray().length);
        }
    }

    @Test
    void closedTensorsAndTheirViewsRefuseUse() {
        try (Device dev = CpuDevice.open(1)) {
            Tensor t = dev.allocate(DType.F32, 4);
            Tensor v = t.view(0, 2);
            t.close();
            t.close();
            IllegalStateException e = assertThrows(IllegalStateException.class, v::toFloatArray);
            assertTrue(e.getMessage().contains("closed"), e.getMessage());
        }
    }

    @Test
    void closingADeviceWithOpenTensorsReportsTheLeak() {
        Device dev = CpuDevice.open(1);
        dev.allocate(DType.F32, 3, 5);
        IllegalStateException e = assertThrows(IllegalStateException.class, dev::close);
        assertTrue(e.getMessage().contains("1 open tensors") && e.getMessage().contains("[3, 5]"), e.getMessage());
    }

    @Test
    void tracksLiveAndPeakBytes() {
        try (Device dev = CpuDevice.open(1)) {
            try (Tensor a = dev.allocate(DType.F32, 10); Tensor b = dev.allocate(DType.BF16, 10)) {
                assertEquals(60, dev.liveBytes());
            }
            assertEquals(0, dev.liveBytes());
            assertEquals(60, dev.peakBytes());
            dev.resetPeak();
            assertEquals(0, dev.peakBytes());
        }
    }

    @Test
    void rejectsBadShapesAndHostLengths() {
        try (Device dev = CpuDevice.open(1)) {
            assertThrows(IllegalArgumentException.class, () -> dev.allocate(DType.F32, 2, -1));
            assertThrows(IllegalArgumentException.class, () -> dev.allocate(DType.F32, 1 << 16, 1 << 16));
            assertThrows(IllegalArgumentException.class, () -> dev.fromFloats(new float[3], 2, 2));
            try (Tensor t = dev.allocate(DType.F32, 4)) {
                assertThrows(IllegalArgumentException.class, () -> t.copyFrom(new float[3]));
                assertThrows(IllegalArgumentException.class, () -> t.copyFrom(new int[4]));
            }
        }
    }

    @Test
    void bf16RoundsToNearestEvenAndConvertsBothWays() {
        assertEquals(1.0f, BF16.toFloat(BF16.fromFloat(1.0f)));
        // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to the even mantissa (1.0).
        assertEquals(1.0f, BF16.toFloat(BF16.fromFloat(1.0f + 0x1p-8f)));
        assertEquals(1.0f + 0x1p-7f, BF16.toFloat(BF16.fromFloat(1.0f + 0x1p-8f + 0x1p-10f)));
        assertTrue(Float.isNaN(BF16.toFloat(BF16.fromFloat(Float.NaN))));
        assertEquals(Float.POSITIVE_INFINITY, BF16.toFloat(BF16.fromFloat(Float.POSITIVE_INFINITY)));
        float[] x = Check.uniform(3, 1025, -100, 100);
        try (Device dev = CpuDevice.open(2);
             Tensor f = dev.fromFloats(x, 1025);
             Tensor h = dev.allocate(DType.BF16, 1025);
             Tensor back = dev.allocate(DType.F32, 1025)) {
            dev.backend().copy(h, f);
            dev.backend().copy(back, h);
            float[] got = back.toFloatArray();
            for (int i = 0; i < x.length; i++) {
                assertEquals(x[i], got[i], Math.abs(x[i]) * 0x1p-8, "element " + i);
                assertEquals(BF16.toFloat(BF16.fromFloat(x[i])), got[i]);
            }
            assertArrayEquals(got, h.toFloatArray());
        }
    }
}
