package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;
import org.kindling.ops.cpu.CpuDevice;
import org.kindling.ops.reference.ReferenceDevice;

/** addSum and addSumOfSquares: a step's scalars accumulated on the device, against the fp64 twin, for any thread count. */
class StepSumsTest {

    /** out after addSum(x, 0.5) then addSumOfSquares(x, 2), starting from 1, on a device. */
    private static float[] run(Device dev, float[] x) {
        try (Tensor t = dev.fromFloats(x, x.length); Tensor out = dev.fromFloats(new float[] {1f, 1f}, 2)) {
            dev.backend().addSum(out.view(0, 1), t, 0.5f);
            dev.backend().addSumOfSquares(out.view(1, 1), t, 2f);
            return out.toFloatArray();
        }
    }

    @Test
    void matchTheReferenceAndDoNotDependOnThreads() {
        for (int n : new int[] {1, 97, 1025, 100_003}) {
            float[] x = Check.uniform(n, n);
            double sum = 0;
            double squares = 0;
            for (float v : x) {
                sum += v;
                squares += (double) v * v;
            }
            try (Device one = CpuDevice.open(1); Device three = CpuDevice.open(3); Device ref = ReferenceDevice.open()) {
                float[] a = run(one, x);
                float[] b = run(three, x);
                float[] r = run(ref, x);
                assertEquals(a[0], b[0], "sum, 1 vs 3 threads, n = " + n);
                assertEquals(a[1], b[1], "sum of squares, 1 vs 3 threads, n = " + n);
                // fp32 storage of an fp64 sum: within one rounding of the stored value.
                assertEquals(1 + 0.5 * sum, a[0], 1e-6 * (1 + Math.abs(0.5 * sum)) + 1e-6, "sum, n = " + n);
                assertEquals(1 + 2 * squares, a[1], 1e-6 * (1 + 2 * squares), "sum of squares, n = " + n);
                assertEquals(r[0], a[0], 1e-6 * (1 + Math.abs(r[0])), "cpu vs reference sum, n = " + n);
                assertEquals(r[1], a[1], 1e-6 * (1 + r[1]), "cpu vs reference sum of squares, n = " + n);
            }
        }
    }

    @Test
    void theOutputIsOneF32Element() {
        try (Device dev = CpuDevice.open(1); Tensor x = dev.allocate(DType.F32, 4); Tensor two = dev.allocate(DType.F32, 2);
             Tensor ints = dev.allocate(DType.I32, 1)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> dev.backend().addSum(two, x, 1f));
            assertTrue(e.getMessage().startsWith("addSum out must be one F32 element"), e.getMessage());
            e = assertThrows(IllegalArgumentException.class, () -> dev.backend().addSumOfSquares(ints, x, 1f));
            assertTrue(e.getMessage().startsWith("addSumOfSquares out must be one F32 element"), e.getMessage());
        }
    }
}
