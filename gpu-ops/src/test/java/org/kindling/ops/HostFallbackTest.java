package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.kindling.ops.cpu.CpuDevice;

/**
 * {@link HostFallback} on a stand-in for a GPU: a device whose storage the CPU backend cannot read
 * (it rejects it as "not on the CPU") and whose only kernels are its host copies and fill. Every
 * other op must run through host mirrors and give the CPU device's result bit for bit, aliasing
 * included; the mirrors must be freed (the host device is closed with no open tensors).
 */
class HostFallbackTest {
    private static final int THREADS = 2;

    private CpuDevice cpu;
    private RemoteDevice remote;

    @BeforeEach
    void open() {
        cpu = CpuDevice.open(THREADS);
        remote = new RemoteDevice(CpuDevice.open(THREADS));
    }

    /** Tensors first: a device closed with open tensors fails, which is how a leaked mirror would show. */
    @AfterEach
    void close() {
        owned.forEach(Tensor::close);
        remote.close();
        cpu.close();
    }

    /** Storage the CPU backend does not know: its kernels reject it, so only the fallback can run ops on it. */
    private static final class RemoteStorage extends Storage {
        final float[] floats;
        final int[] ints;
        final short[] shorts;

        RemoteStorage(DType dtype, int length) {
            super(dtype, length);
            floats = dtype == DType.F32 ? new float[length] : null;
            ints = dtype == DType.I32 ? new int[length] : null;
            shorts = dtype == DType.BF16 ? new short[length] : null;
        }

        @Override
        protected void free() {
        }
    }

    /** The remote device's own kernels: host copies (required) and fill (to prove native ops are not mirrored). */
    public static final class RemoteKernels {
        final AtomicInteger fills = new AtomicInteger();
        /** Elements moved by the host copies, both ways. */
        final AtomicInteger moved = new AtomicInteger();

        public String name() {
            return "remote";
        }

        public String gemmImpl() {
            return "none";
        }

        private static RemoteStorage storage(Tensor t) {
            return (RemoteStorage) t.storage();
        }

        public void copyFromHost(Tensor dst, float[] src) {
            moved.addAndGet(src.length);
            KernelChecks.numel(dst, "dst", src.length);
            RemoteStorage s = storage(dst);
            for (int i = 0; i < src.length; i++) {
                if (dst.dtype() == DType.BF16) {
                    s.shorts[dst.offset() + i] = BF16.fromFloat(src[i]);
                } else {
                    s.floats[dst.offset() + i] = src[i];
                }
            }
        }

        public void copyFromHost(Tensor dst, int[] src) {
            moved.addAndGet(src.length);
            KernelChecks.numel(dst, "dst", src.length);
            System.arraycopy(src, 0, storage(dst).ints, dst.offset(), src.length);
        }

        public void copyToHost(float[] dst, Tensor src) {
            moved.addAndGet(dst.length);
            KernelChecks.numel(src, "src", dst.length);
            RemoteStorage s = storage(src);
            for (int i = 0; i < dst.length; i++) {
                dst[i] = src.dtype() == DType.BF16 ? BF16.toFloat(s.shorts[src.offset() + i]) : s.floats[src.offset() + i];
            }
        }

        public void copyToHost(int[] dst, Tensor src) {
            moved.addAndGet(dst.length);
            KernelChecks.numel(src, "src", dst.length);
            System.arraycopy(storage(src).ints, src.offset(), dst, 0, dst.length);
        }

        public void fill(Tensor out, float value) {
            fills.incrementAndGet();
            java.util.Arrays.fill(storage(out).floats, out.offset(), out.offset() + out.numel(), value);
        }
    }

    private static final class RemoteDevice extends Device {
        final RemoteKernels kernels = new RemoteKernels();
        final Device host;
        final Backend backend;

        RemoteDevice(Device host) {
            this.host = host;
            this.backend = HostFallback.backend(this, kernels, host);
        }

        @Override
        public Kind kind() {
            return Kind.CUDA;
        }

        @Override
        public int ordinal() {
            return 7;
        }

        @Override
        public Backend backend() {
            return backend;
        }

        @Override
        public int threads() {
            return 1;
        }

        @Override
        public Fence fence() {
            return Fence.DONE;
        }

        @Override
        protected Storage newStorage(DType dtype, int length) {
            return new RemoteStorage(dtype, length);
        }

        @Override
        protected void shutdown() {
            host.close();
        }
    }

    /** A tensor made on both devices from the same host values. */
    private record Twin(Tensor c, Tensor r) {
        void assertSame(String what) {
            if (c.dtype() == DType.I32) {
                assertArrayEquals(c.toIntArray(), r.toIntArray(), what);
            } else {
                assertArrayEquals(c.toFloatArray(), r.toFloatArray(), 0f, what);
            }
        }

        Twin view(int start, int... shape) {
            return new Twin(c.view(start, shape), r.view(start, shape));
        }
    }

    private final List<Tensor> owned = new ArrayList<>();

    private Twin floats(float[] values, int... shape) {
        Twin t = new Twin(cpu.fromFloats(values, shape), remote.fromFloats(values, shape));
        owned.add(t.c);
        owned.add(t.r);
        return t;
    }

    private Twin ints(int[] values, int... shape) {
        Twin t = new Twin(cpu.fromInts(values, shape), remote.fromInts(values, shape));
        owned.add(t.c);
        owned.add(t.r);
        return t;
    }

    @Test
    void gemmWithOperandsInOneStorageMatchesTheCpu() {
        int m = 13;
        int n = 17;
        int k = 29;
        // a, b and c are views of one buffer, as a model's parameters live in one flat block.
        Twin buf = floats(Check.uniform(1, m * k + k * n + m * n + 3), m * k + k * n + m * n + 3);
        Twin a = buf.view(1, m, k);
        Twin b = buf.view(1 + m * k, n, k);
        Twin c = buf.view(1 + m * k + k * n, m, n);
        Gemm g = Gemm.of(false, true, m, n, k).scaled(0.5f, 1f);
        cpu.backend().gemm(g, c.c, a.c, b.c);
        remote.backend().gemm(g, c.r, a.r, b.r);
        buf.assertSame("gemm result and untouched operands");
        assertTrue(HostFallback.fallsBack(remote.backend(), "gemm"));
    }

    @Test
    void softmaxInPlaceMatchesTheCpu() {
        Twin buf = floats(Check.uniform(2, 5 + 7 * 33, -4, 4), 5 + 7 * 33);
        Twin x = buf.view(5, 7, 33);
        cpu.backend().softmaxForward(x.c, x.c);
        remote.backend().softmaxForward(x.r, x.r);
        buf.assertSame("softmax with y aliasing x");
    }

    @Test
    void varlenAttentionForwardMatchesTheCpu() {
        int[] cu = {0, 5, 5, 19};
        int t = cu[cu.length - 1];
        int heads = 4;
        int kvHeads = 2;
        int d = 16;
        Twin q = floats(Check.uniform(3, t * heads * d), t, heads, d);
        Twin k = floats(Check.uniform(4, t * kvHeads * d), t, kvHeads, d);
        Twin v = floats(Check.uniform(5, t * kvHeads * d), t, kvHeads, d);
        Twin out = floats(new float[t * heads * d], t, heads, d);
        Twin lse = floats(new float[heads * t], heads, t);
        Twin offsets = ints(cu, cu.length);
        Varlen vc = Varlen.of(offsets.c, cu);
        Varlen vr = Varlen.of(offsets.r, cu);
        Attention attn = Attention.of(heads, kvHeads, d).withCausal(true);
        cpu.backend().attentionForward(out.c, lse.c, q.c, k.c, v.c, vc, vc, attn);
        remote.backend().attentionForward(out.r, lse.r, q.r, k.r, v.r, vr, vr, attn);
        out.assertSame("attention out");
        lse.assertSame("attention lse");
        offsets.assertSame("cu_seqlens");
    }

    @Test
    void scatterAddRowsMatchesTheCpu() {
        int n = 11;
        int cols = 9;
        int r = 4;
        Twin x = floats(Check.uniform(6, n * cols), n, cols);
        Twin out = floats(Check.uniform(7, r * cols), r, cols);
        int[] rowIds = Check.ints(8, n, r);
        rowIds[3] = -1;
        Twin rows = ints(rowIds, n);
        Twin weights = floats(Check.uniform(9, n), n);
        cpu.backend().scatterAddRows(out.c, x.c, rows.c, weights.c);
        remote.backend().scatterAddRows(out.r, x.r, rows.r, weights.r);
        out.assertSame("scatterAddRows out");
    }

    @Test
    void adamWOverViewsOfOneBufferMatchesTheCpu() {
        int n = 257;
        // params and first moments share a buffer; grads and second moments another.
        Twin pm = floats(Check.uniform(10, 2 * n), 2 * n);
        float[] gv = Check.uniform(11, 2 * n);
        for (int i = n; i < 2 * n; i++) {
            gv[i] = Math.abs(gv[i]);
        }
        Twin gvBuf = floats(gv, 2 * n);
        AdamW step = new AdamW(1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 3, 0.5f);
        cpu.backend().adamW(pm.view(0, n).c, gvBuf.view(0, n).c, pm.view(n, n).c, gvBuf.view(n, n).c, step);
        remote.backend().adamW(pm.view(0, n).r, gvBuf.view(0, n).r, pm.view(n, n).r, gvBuf.view(n, n).r, step);
        pm.assertSame("params and first moments");
        gvBuf.assertSame("grads and second moments");
    }

    @Test
    void resultsAndListArgumentsComeBack() {
        Twin a = floats(Check.uniform(12, 100), 100);
        Twin b = floats(Check.uniform(13, 31), 31);
        assertEquals(cpu.backend().sumOfSquares(a.c), remote.backend().sumOfSquares(a.r));
        assertEquals(cpu.backend().globalL2Norm(List.of(a.c, b.c)), remote.backend().globalL2Norm(List.of(a.r, b.r)));
        Gemm g = Gemm.of(false, false, 2, 3, 4);
        Twin buf = floats(Check.uniform(14, 2 * (8 + 12 + 6)), 2 * (8 + 12 + 6));
        List<Twin> as = List.of(buf.view(0, 2, 4), buf.view(8, 2, 4));
        List<Twin> bs = List.of(buf.view(16, 4, 3), buf.view(28, 4, 3));
        List<Twin> cs = List.of(buf.view(40, 2, 3), buf.view(46, 2, 3));
        cpu.backend().gemmBatched(g, cs.stream().map(Twin::c).toList(), as.stream().map(Twin::c).toList(),
                bs.stream().map(Twin::c).toList());
        remote.backend().gemmBatched(g, cs.stream().map(Twin::r).toList(), as.stream().map(Twin::r).toList(),
                bs.stream().map(Twin::r).toList());
        buf.assertSame("gemmBatched over lists of views");
    }

    @Test
    void bf16RoundTripsThroughTheMirrorsExactly() {
        Twin src = floats(Check.uniform(15, 40, -3, 3), 40);
        try (Tensor hc = cpu.allocate(DType.BF16, 40); Tensor hr = remote.allocate(DType.BF16, 40)) {
            cpu.backend().copy(hc, src.c);
            remote.backend().copy(hr, src.r);
            assertArrayEquals(hc.toFloatArray(), hr.toFloatArray(), 0f);
        }
    }

    @Test
    void nativeKernelsRunOnTheDeviceAndErrorsPassThrough() {
        Twin x = floats(new float[10], 10);
        remote.backend().fill(x.r, 2.5f);
        assertEquals(1, remote.kernels.fills.get());
        assertFalse(HostFallback.fallsBack(remote.backend(), "fill"));
        assertEquals("remote", remote.backend().name());
        Twin y = floats(new float[11], 11);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> remote.backend().unary(UnaryOp.EXP, y.r, x.r));
        assertTrue(e.getMessage().contains("differ in element count"), e.getMessage());
    }

    @Test
    void onlyTheArgumentsElementsMoveNotTheGapsBetweenThem() {
        Twin buf = floats(Check.uniform(16, 100), 100);
        Twin x = buf.view(0, 10);
        Twin out = buf.view(90, 10);
        remote.kernels.moved.set(0);
        cpu.backend().unary(UnaryOp.TANH, out.c, x.c);
        remote.backend().unary(UnaryOp.TANH, out.r, x.r);
        assertEquals(2 * 20, remote.kernels.moved.get(), "10 + 10 elements up and back, none of the 80 between");
        buf.assertSame("unary across one buffer");
    }

    @Test
    void kernelsWithoutHostCopiesAreRefused() {
        Object kernels = new Object() {
            @SuppressWarnings("unused")
            public String name() {
                return "half";
            }
        };
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> HostFallback.backend(remote, kernels, remote.host));
        assertTrue(e.getMessage().contains("gemmImpl"), e.getMessage());
    }
}
