package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.reflect.Method;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.kindling.ops.cpu.CpuDevice;

/** The profiling device: every kernel has a class, counts follow the stated formulas, results are unchanged. */
class ProfilerTest {

    @Test
    void everyBackendMethodHasAKernelClass() {
        for (Method m : Backend.class.getMethods()) {
            if (KernelClass.NOT_KERNELS.contains(m.getName())) {
                assertNull(KernelClass.of(m), m.getName());
            } else {
                assertNotNull(KernelClass.of(m), m.getName()); // of() throws, naming the method, when one is missing
            }
        }
    }

    @Test
    void aMethodWithoutAClassIsAnErrorNamingIt() throws NoSuchMethodException {
        Method unknown = Object.class.getMethod("notifyAll");
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> KernelClass.of(unknown));
        assertTrue(e.getMessage().contains("Backend.notifyAll"), e.getMessage());
    }

    private static float[] random(SplittableRandom r, int n) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) {
            v[i] = (float) (r.nextDouble() * 2 - 1);
        }
        return v;
    }

    @Test
    void gemmCountsItsFlopsBytesAndGivesTheSameProduct() {
        int m = 24;
        int n = 16;
        int k = 8;
        SplittableRandom r = new SplittableRandom(3);
        float[] a = random(r, m * k);
        float[] b = random(r, k * n);
        float[] plain;
        try (Device cpu = CpuDevice.open(2); Tensor ta = cpu.fromFloats(a, m, k); Tensor tb = cpu.fromFloats(b, k, n);
             Tensor tc = cpu.allocate(DType.F32, m, n)) {
            cpu.backend().gemm(Gemm.of(false, false, m, n, k), tc, ta, tb);
            plain = tc.toFloatArray();
        }
        Profiler p = new Profiler();
        try (Device dev = p.wrap(CpuDevice.open(2)); Tensor ta = dev.fromFloats(a, m, k); Tensor tb = dev.fromFloats(b, k, n);
             Tensor tc = dev.allocate(DType.F32, m, n)) {
            p.reset(); // the uploads above count as transfers
            dev.backend().gemm(Gemm.of(false, false, m, n, k).scaled(1f, 1f), tc, ta, tb);
            Profiler.Totals g = p.totals().get(KernelClass.GEMM);
            assertEquals(1, g.calls());
            assertEquals(2.0 * m * n * k, g.flops());
            // A and B read, C read and written (beta = 1), 4 bytes each.
            assertEquals(4.0 * (m * k + k * n + 2 * m * n), g.bytes());
            assertTrue(g.nanos() > 0);
            assertArrayEquals(plain, tc.toFloatArray(), 0f);
            assertEquals(1, p.totals().get(KernelClass.OTHER).calls(), "the read-back");
            assertEquals(List.of("copyToHost", "gemm"), List.copyOf(p.kernels().keySet()));
            assertEquals(g, p.kernels().get("gemm"));
        }
    }

    @Test
    void causalAttentionCountsOnlyAttendedPairs() {
        int heads = 2;
        int hs = 8;
        int[] cu = {0, 4, 7}; // sequences of 4 and 3 tokens: 10 + 6 causal pairs
        int t = cu[2];
        Profiler p = new Profiler();
        try (Device dev = p.wrap(CpuDevice.open(1)); Tensor q = dev.allocate(DType.F32, t, heads, hs);
             Tensor k = dev.allocate(DType.F32, t, heads, hs); Tensor v = dev.allocate(DType.F32, t, heads, hs);
             Tensor out = dev.allocate(DType.F32, t, heads, hs); Tensor lse = dev.allocate(DType.F32, heads, t)) {
            Varlen offsets = Varlen.upload(dev, cu);
            try (Tensor ignored = offsets.device()) {
                p.reset();
                Attention attn = Attention.of(heads, heads, hs).withCausal(true);
                dev.backend().attentionForward(out, lse, q, k, v, offsets, offsets, attn);
                Profiler.Totals a = p.totals().get(KernelClass.ATTENTION);
                assertEquals(4.0 * heads * hs * 16, a.flops());
                // q, k, v, out, lse and the offsets, each once.
                assertEquals(4.0 * (4 * t * heads * hs + heads * t + cu.length), a.bytes());
                try (Tensor dq = dev.allocate(DType.F32, t, heads, hs); Tensor dk = dev.allocate(DType.F32, t, heads, hs);
                     Tensor dv = dev.allocate(DType.F32, t, heads, hs); Tensor dout = dev.allocate(DType.F32, t, heads, hs)) {
                    dev.backend().attentionBackward(dq, dk, dv, dout, q, k, v, out, lse, offsets, offsets, attn);
                }
                assertEquals(14.0 * heads * hs * 16, p.totals().get(KernelClass.ATTENTION).flops());
                // Without the mask every query meets every key of its sequence: 16 + 9 pairs.
                dev.backend().attentionForward(out, lse, q, k, v, offsets, offsets, attn.withCausal(false));
                assertEquals(14.0 * heads * hs * 16 + 4.0 * heads * hs * 25, p.totals().get(KernelClass.ATTENTION).flops());
            }
        }
    }

    @Test
    void perElementKernelsAndTheOptimizer() {
        Profiler p = new Profiler();
        try (Device dev = p.wrap(CpuDevice.open(1)); Tensor logits = dev.allocate(DType.F32, 6, 10);
             Tensor losses = dev.allocate(DType.F32, 6); Tensor targets = dev.fromInts(new int[6], 6);
             Tensor w = dev.allocate(DType.F32, 50); Tensor g = dev.allocate(DType.F32, 50);
             Tensor m = dev.allocate(DType.F32, 50); Tensor v = dev.allocate(DType.F32, 50)) {
            p.reset();
            dev.backend().crossEntropyForwardBackward(losses, logits, logits, targets, -1, 1f);
            Profiler.Totals loss = p.totals().get(KernelClass.LOSS);
            assertEquals(6.0 * 60, loss.flops());
            // logits (aliased by dlogits: once), losses, targets.
            assertEquals(4.0 * (60 + 6 + 6), loss.bytes());
            dev.backend().adamW(w, g, m, v, new AdamW(1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1, 1f));
            Profiler.Totals opt = p.totals().get(KernelClass.OPTIMIZER);
            assertEquals(12.0 * 50, opt.flops());
            assertEquals(4.0 * 50 * 7, opt.bytes());
        }
    }

    @Test
    void nestedCallsAndCommunicationCountOnce() {
        Profiler p = new Profiler();
        try (Device dev = p.wrap(CpuDevice.open(1)); Tensor a = dev.fromFloats(new float[] {3, 4}, 2);
             Tensor b = dev.fromFloats(new float[] {12}, 1)) {
            p.reset();
            // A default method: its inner sumOfSquares calls are its own time.
            assertEquals(13.0, dev.backend().globalL2Norm(List.of(a, b)), 1e-9);
            assertEquals(1, p.totals().get(KernelClass.ELEMENTWISE).calls());
            // A sync's copies are communication, not transfers.
            float[] host = p.communication(8.0, () -> a.toFloatArray());
            assertArrayEquals(new float[] {3, 4}, host, 0f);
            Map<KernelClass, Profiler.Totals> t = p.totals();
            assertEquals(1, t.get(KernelClass.COMMUNICATION).calls());
            assertEquals(8.0, t.get(KernelClass.COMMUNICATION).bytes());
            assertEquals(0, t.get(KernelClass.OTHER).calls());
            assertEquals(List.of("communication", "globalL2Norm"), List.copyOf(p.kernels().keySet()));
            p.reset();
            assertEquals(0, p.totals().get(KernelClass.ELEMENTWISE).calls());
            assertTrue(p.kernels().isEmpty());
        }
    }

    @Test
    void closingTheProfilingDeviceReportsItsLeaks() {
        Device dev = new Profiler().wrap(CpuDevice.open(1));
        dev.allocate(DType.F32, 3);
        assertThrows(IllegalStateException.class, dev::close);
    }
}
