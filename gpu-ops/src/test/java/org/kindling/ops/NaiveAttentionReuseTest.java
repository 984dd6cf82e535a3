package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import org.junit.jupiter.api.Test;
import org.kindling.ops.cpu.CpuDevice;

/** NaiveAttention keeps its buffers between calls: reusing them, or switching layouts, must not change any result. */
class NaiveAttentionReuseTest {
    private record Layout(int[] cu, float[] q, float[] k, float[] v, float[] dout) {
        static Layout of(long seed, int heads, int headDim, int... cu) {
            int n = cu[cu.length - 1] * heads * headDim;
            return new Layout(cu, AttentionTest.gaussian(seed, n), AttentionTest.gaussian(seed + 1, n),
                    AttentionTest.gaussian(seed + 2, n), AttentionTest.gaussian(seed + 3, n));
        }
    }

    private static AttentionTest.Run run(Device d, NaiveAttention na, Layout l) {
        int n = l.q().length;
        try (Tensor tq = d.fromFloats(l.q(), n); Tensor tk = d.fromFloats(l.k(), n); Tensor tv = d.fromFloats(l.v(), n);
             Tensor tdo = d.fromFloats(l.dout(), n); Tensor cuT = d.fromInts(l.cu(), l.cu().length);
             Tensor out = d.allocate(DType.F32, n); Tensor dq = d.allocate(DType.F32, n); Tensor dk = d.allocate(DType.F32, n);
             Tensor dv = d.allocate(DType.F32, n)) {
            Varlen cu = Varlen.of(cuT, l.cu());
            na.forward(out, tq, tk, tv, cu, cu);
            na.backward(dq, dk, dv, tdo, tq, tk, tv);
            return new AttentionTest.Run(out.toFloatArray(), null, dq.toFloatArray(), dk.toFloatArray(), dv.toFloatArray());
        }
    }

    private static void assertSame(AttentionTest.Run want, AttentionTest.Run got) {
        assertArrayEquals(want.out(), got.out());
        assertArrayEquals(want.dq(), got.dq());
        assertArrayEquals(want.dk(), got.dk());
        assertArrayEquals(want.dv(), got.dv());
    }

    @Test
    void reusedBuffersGiveTheResultsOfAFreshInstance() {
        Attention a = Attention.of(2, 2, 8).withCausal(true);
        Layout two = Layout.of(1, 2, 8, 0, 5, 12);
        Layout one = Layout.of(9, 2, 8, 0, 17);
        try (Device d = CpuDevice.open(2)) {
            AttentionTest.Run freshTwo;
            AttentionTest.Run freshOne;
            try (NaiveAttention na = new NaiveAttention(d, a)) {
                freshTwo = run(d, na, two);
            }
            try (NaiveAttention na = new NaiveAttention(d, a)) {
                freshOne = run(d, na, one);
            }
            long before = d.liveBytes();
            try (NaiveAttention na = new NaiveAttention(d, a)) {
                assertSame(freshTwo, run(d, na, two));
                long held = d.liveBytes() - before;
                // P of both heads of both sequences (5x5 and 7x7), two masks and dP/dS for the larger one.
                assertEquals(4L * (2 * 25 + 2 * 49 + 25 + 49 + 2 * 49), held);
                assertSame(freshTwo, run(d, na, two));
                assertEquals(held, d.liveBytes() - before, "the same layout allocates nothing more");
                assertSame(freshOne, run(d, na, one));
                assertSame(freshTwo, run(d, na, two));
                assertThrows(IllegalStateException.class, () -> {
                    try (Tensor t = d.allocate(DType.F32, 1)) {
                        na.backward(t, t, t, t, t, t, t);
                    }
                }, "backward needs a forward first, also after buffers are kept");
            }
            assertEquals(before, d.liveBytes(), "close releases every buffer");
        }
    }
}
