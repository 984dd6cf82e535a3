package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.kindling.ops.Reference.widen;

import java.util.ArrayList;
import java.util.List;
import java.util.function.Function;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;
import org.kindling.ops.cpu.CpuDevice;
import org.kindling.ops.reference.ReferenceDevice;

/**
 * The fp64 reference device runs every kernel and agrees with the CPU backend on the same fp32
 * inputs within fp32 tolerances, at awkward sizes; backward kernels accumulate there too (every
 * gradient starts from random values). Its own contract: doubles survive host round trips, F32
 * storage is 8 bytes an element, BF16 is refused, leaks are reported, stale attention state is
 * rejected.
 */
class ReferenceBackendTest {
    private static Device cpu;
    private static Device ref;

    @BeforeAll
    static void open() {
        cpu = CpuDevice.open(2);
        ref = ReferenceDevice.open();
    }

    @AfterAll
    static void close() {
        cpu.close();
        ref.close();
    }

    /** Tensors of one kernel call on one device, closed together. */
    private static final class On implements AutoCloseable {
        final Device d;
        final Backend be;
        private final List<Tensor> open = new ArrayList<>();

        On(Device d) {
            this.d = d;
            this.be = d.backend();
        }

        Tensor f(float[] v, int... shape) {
            return keep(d.fromFloats(v, shape));
        }

        Tensor i(int[] v) {
            return keep(d.fromInts(v, v.length));
        }

        Varlen cu(int[] host) {
            return Varlen.of(i(host), host);
        }

        Tensor zeros(int... shape) {
            return keep(d.allocate(DType.F32, shape));
        }

        private Tensor keep(Tensor t) {
            open.add(t);
            return t;
        }

        @Override
        public void close() {
            open.forEach(Tensor::close);
        }
    }

    /** Runs {@code kernel} on both devices; every returned tensor must agree within atol + rtol·|reference|. */
    private static void agree(String what, double atol, double rtol, Function<On, Tensor[]> kernel) {
        try (On c = new On(cpu); On r = new On(ref)) {
            Tensor[] got = kernel.apply(c);
            Tensor[] want = kernel.apply(r);
            for (int i = 0; i < want.length; i++) {
                Check.close(what + " output " + i, want[i].toDoubleArray(), got[i].toFloatArray(), atol, rtol);
            }
        }
    }

    @ParameterizedTest(name = "{0}x{1}")
    @MethodSource("org.kindling.ops.Shapes#rowsCols")
    void rowKernelsAgreeWithTheCpuBackend(int rows, int cols) {
        int n = rows * cols;
        float[] x = Check.uniform(1, n, -3, 3);
        float[] x2 = Check.uniform(2, n, 0.5, 2);
        float[] row = Check.uniform(3, cols, 0.5, 1.5);
        float[] row2 = Check.uniform(4, cols);
        float[] dy = Check.uniform(5, n);
        float[] prior = Check.uniform(6, n);
        float[] priorRow = Check.uniform(7, cols);
        float[] priorRow2 = Check.uniform(8, cols);
        double sumTol = 2e-6 * Math.sqrt(Math.max(rows, cols));
        for (UnaryOp op : UnaryOp.values()) {
            boolean positive = op == UnaryOp.LOG || op == UnaryOp.SQRT || op == UnaryOp.RECIPROCAL;
            agree("unary " + op, 1e-6, 2e-6, o -> {
                Tensor out = o.zeros(rows, cols);
                o.be.unary(op, out, o.f(positive ? x2 : x, rows, cols));
                return new Tensor[] {out};
            });
        }
        for (BinaryOp op : BinaryOp.values()) {
            agree("binary " + op, 1e-6, 2e-6, o -> {
                Tensor full = o.zeros(rows, cols);
                Tensor broadcast = o.zeros(rows, cols);
                o.be.binary(op, full, o.f(x, rows, cols), o.f(x2, rows, cols));
                o.be.binary(op, broadcast, o.f(x, rows, cols), o.f(row, cols));
                return new Tensor[] {full, broadcast};
            });
        }
        for (ReduceOp op : ReduceOp.values()) {
            agree("reduceRows " + op, sumTol, 1e-6, o -> {
                Tensor out = o.zeros(rows);
                o.be.reduceRows(op, out, o.f(x, rows, cols));
                return new Tensor[] {out};
            });
        }
        agree("fill, affine, copy, addColumnSums", sumTol, 1e-6, o -> {
            Tensor filled = o.zeros(rows, cols);
            o.be.fill(filled, 0.3f);
            Tensor affine = o.zeros(rows, cols);
            o.be.affine(affine, o.f(x, rows, cols), 1.7f, -0.2f);
            Tensor copied = o.zeros(rows, cols);
            o.be.copy(copied, affine);
            Tensor sums = o.f(priorRow, cols);
            o.be.addColumnSums(sums, o.f(x, rows, cols));
            return new Tensor[] {filled, affine, copied, sums};
        });
        agree("softmax", 1e-6, 1e-5, o -> {
            Tensor y = o.zeros(rows, cols);
            o.be.softmaxForward(y, o.f(x, rows, cols));
            Tensor dx = o.f(prior, rows, cols);
            o.be.softmaxBackward(dx, o.f(dy, rows, cols), y);
            return new Tensor[] {y, dx};
        });
        // C = 1: rstd = 1/√eps amplifies fp32 rounding of x − mean.
        double normTol = cols == 1 ? 2e-2 : 1e-4;
        agree("layerNorm", normTol, 1e-4, o -> {
            Tensor xt = o.f(x, rows, cols);
            Tensor w = o.f(row, cols);
            Tensor out = o.zeros(rows, cols);
            Tensor mean = o.zeros(rows);
            Tensor rstd = o.zeros(rows);
            o.be.layerNormForward(out, mean, rstd, xt, w, o.f(row2, cols), 1e-5f);
            Tensor dx = o.f(prior, rows, cols);
            Tensor dw = o.f(priorRow, cols);
            Tensor db = o.f(priorRow2, cols);
            o.be.layerNormBackward(dx, dw, db, o.f(dy, rows, cols), xt, w, mean, rstd);
            return new Tensor[] {out, mean, rstd, dx, dw, db};
        });
        agree("rmsNorm", 1e-4, 1e-4, o -> {
            Tensor xt = o.f(x, rows, cols);
            Tensor w = o.f(row, cols);
            Tensor out = o.zeros(rows, cols);
            Tensor rstd = o.zeros(rows);
            o.be.rmsNormForward(out, rstd, xt, w, 1e-6f);
            Tensor dx = o.f(prior, rows, cols);
            Tensor dw = o.f(priorRow, cols);
            o.be.rmsNormBackward(dx, dw, o.f(dy, rows, cols), xt, w, rstd);
            return new Tensor[] {out, rstd, dx, dw};
        });
        agree("gelu and dropout", 1e-6, 1e-5, o -> {
            Tensor xt = o.f(x, rows, cols);
            Tensor g = o.zeros(rows, cols);
            o.be.geluForward(g, xt);
            Tensor dg = o.f(prior, rows, cols);
            o.be.geluBackward(dg, o.f(dy, rows, cols), xt);
            Tensor d = o.zeros(rows, cols);
            o.be.dropoutForward(d, xt, 0.3f, 77);
            Tensor dd = o.f(prior, rows, cols);
            o.be.dropoutBackward(dd, o.f(dy, rows, cols), 0.3f, 77);
            return new Tensor[] {g, dg, d, dd};
        });
        int[] targets = Check.ints(9, rows, cols);
        targets[0] = -100;
        agree("cross-entropy", 1e-5, 1e-5, o -> {
            Tensor losses = o.zeros(rows);
            o.be.crossEntropyForward(losses, o.f(x, rows, cols), o.i(targets), -100);
            Tensor fused = o.zeros(rows);
            Tensor logits = o.f(x, rows, cols);
            o.be.crossEntropyForwardBackward(fused, logits, logits, o.i(targets), -100, 0.25f);
            return new Tensor[] {losses, fused, logits};
        });
        agree("sumOfSquares and the global norm", 0, 1e-6, o -> {
            Tensor a = o.f(x, rows, cols);
            Tensor b = o.f(row, cols);
            return new Tensor[] {o.f(new float[] {(float) o.be.sumOfSquares(a), (float) o.be.globalL2Norm(List.of(a, b))}, 2)};
        });
    }

    @Test
    void embeddingsAndAdamWAgreeWithTheCpuBackend() {
        int vocab = 59;
        int cols = 97;
        int[] ids = Check.ints(10, 7, vocab);
        ids[3] = ids[1];
        float[] table = Check.uniform(11, vocab * cols);
        float[] dout = Check.uniform(12, ids.length * cols);
        float[] prior = Check.uniform(13, vocab * cols);
        agree("embedding", 1e-6, 1e-6, o -> {
            Tensor out = o.zeros(ids.length, cols);
            o.be.embeddingForward(out, o.i(ids), o.f(table, vocab, cols));
            Tensor dt = o.f(prior, vocab, cols);
            o.be.embeddingBackward(dt, o.f(dout, ids.length, cols), o.i(ids));
            return new Tensor[] {out, dt};
        });
        int n = 97;
        AdamW step = new AdamW(3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 7, 0.5f);
        agree("adamW", 1e-6, 1e-5, o -> {
            Tensor p = o.f(Check.uniform(14, n), n);
            Tensor m = o.f(Check.uniform(15, n, -0.1, 0.1), n);
            Tensor v = o.f(Check.uniform(16, n, 0, 0.01), n);
            o.be.adamW(p, o.f(Check.uniform(17, n), n), m, v, step);
            return new Tensor[] {p, m, v};
        });
    }

    @Test
    void gemmLayoutsAgreeWithTheCpuBackend() {
        int m = 7;
        int n = 59;
        int k = 97;
        for (int t = 0; t < 4; t++) {
            boolean ta = (t & 1) != 0;
            boolean tb = (t & 2) != 0;
            Gemm single = Gemm.of(ta, tb, m, n, k).scaled(0.5f, 0.75f);
            Gemm padded = single.leading((ta ? m : k) + 3, (tb ? k : n) + 2, n + 1);
            Gemm batched = Gemm.batched(3, ta, tb, m, n, k).scaled(1f, 1f);
            float[] a = Check.uniform(20 + t, 3 * (m + 3) * (k + 3));
            float[] b = Check.uniform(30 + t, 3 * (k + 2) * (n + 2));
            float[] c = Check.uniform(40 + t, 3 * m * (n + 1));
            float[] a2 = Check.uniform(50 + t, a.length);
            float[] b2 = Check.uniform(60 + t, b.length);
            agree("gemm transA=" + ta + " transB=" + tb, 1e-5, 1e-5, o -> {
                Tensor c1 = o.f(c, c.length);
                o.be.gemm(single, c1, o.f(a, a.length), o.f(b, b.length));
                Tensor c2 = o.f(c, c.length);
                o.be.gemm(padded, c2, o.f(a, a.length), o.f(b, b.length));
                Tensor c3 = o.f(c, c.length);
                o.be.gemm(batched, c3, o.f(a, a.length), o.f(b, b.length));
                Tensor c4 = o.f(c, c.length);
                Tensor c5 = o.f(c, c.length);
                o.be.gemmBatched(single, List.of(c4, c5), List.of(o.f(a, a.length), o.f(a2, a.length)),
                        List.of(o.f(b, b.length), o.f(b2, b.length)));
                return new Tensor[] {c1, c2, c3, c4, c5};
            });
        }
    }

    @Test
    void attentionAgreesWithTheCpuBackend() {
        Attention a = Attention.of(4, 2, 59).withCausal(true);
        int[] cuQ = {0, 1, 98, 105};
        int[] cuK = {0, 7, 104, 111};
        float[] q = Check.uniform(50, 105 * 4 * 59);
        float[] k = Check.uniform(51, 111 * 2 * 59);
        float[] v = Check.uniform(52, 111 * 2 * 59);
        float[] dout = Check.uniform(53, q.length);
        agree("attention", 2e-5, 1e-4, o -> {
            Tensor tq = o.f(q, q.length);
            Tensor tk = o.f(k, k.length);
            Tensor tv = o.f(v, v.length);
            Varlen cq = o.cu(cuQ);
            Varlen ck = o.cu(cuK);
            Tensor out = o.zeros(q.length);
            Tensor lse = o.zeros(4 * 105);
            o.be.attentionForward(out, lse, tq, tk, tv, cq, ck, a);
            Tensor dq = o.f(Check.uniform(54, q.length), q.length);
            Tensor dk = o.f(Check.uniform(55, k.length), k.length);
            Tensor dv = o.f(Check.uniform(56, v.length), v.length);
            o.be.attentionBackward(dq, dk, dv, o.f(dout, dout.length), tq, tk, tv, out, lse, cq, ck, a);
            return new Tensor[] {out, lse, dq, dk, dv};
        });
    }

    @Test
    void holdsDoublesThatTheCpuRounds() {
        double[] v = {1 + 1e-12, -3.25, Math.PI};
        try (Tensor r = ref.allocate(DType.F32, 3); Tensor c = cpu.allocate(DType.F32, 3)) {
            assertArrayEquals(v, r.copyFrom(v).toDoubleArray());
            assertArrayEquals(new float[] {1f, -3.25f, (float) Math.PI}, r.toFloatArray());
            assertArrayEquals(widen(new float[] {1f, -3.25f, (float) Math.PI}), c.copyFrom(v).toDoubleArray());
            assertEquals(24, ref.liveBytes(), "8 bytes per F32 element on the reference device");
        }
        try (Tensor ids = ref.fromInts(new int[] {4, -1}, 2)) {
            assertArrayEquals(new int[] {4, -1}, ids.toIntArray());
        }
    }

    @Test
    void refusesBf16AndReportsLeaks() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> ref.allocate(DType.BF16, 2));
        assertTrue(e.getMessage().contains("BF16"), e.getMessage());
        Device d = ReferenceDevice.open();
        d.allocate(DType.F32, 5, 2);
        IllegalStateException leak = assertThrows(IllegalStateException.class, d::close);
        assertTrue(leak.getMessage().contains("F32[5, 2]"), leak.getMessage());
        assertEquals("reference", d.toString());
    }

    @Test
    void attentionBackwardRejectsSavedStateTheForwardDidNotWrite() {
        Attention a = Attention.of(2, 1, 3).withCausal(true);
        try (On o = new On(ref)) {
            Tensor q = o.f(Check.uniform(60, 5 * 6), 5 * 6);
            Tensor k = o.f(Check.uniform(61, 5 * 3), 5 * 3);
            Tensor v = o.f(Check.uniform(62, 5 * 3), 5 * 3);
            Varlen cu = o.cu(new int[] {0, 5});
            Tensor out = o.zeros(30);
            Tensor lse = o.zeros(10);
            o.be.attentionForward(out, lse, q, k, v, cu, cu, a);
            Tensor dq = o.zeros(30);
            o.be.attentionBackward(dq, o.zeros(15), o.zeros(15), o.f(Check.uniform(63, 30), 30), q, k, v, out, lse, cu, cu, a);
            assertNotEquals(0.0, o.be.sumOfSquares(dq));
            v.copyFrom(Check.uniform(64, 15));
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> o.be.attentionBackward(dq,
                    o.zeros(15), o.zeros(15), o.zeros(30), q, k, v, out, lse, cu, cu, a));
            assertTrue(e.getMessage().contains("stale"), e.getMessage());
        }
    }

    // ---- linear attention ----

    @Test
    void linearAttentionAgreesWithTheCpuBackend() {
        int[] cu = {0, 1, 98, 165};
        int heads = 2;
        int f = 59;
        int d = 33;
        float[] q = LinearAttentionTest.features(70, 165 * heads * f);
        float[] k = LinearAttentionTest.features(71, 165 * heads * f);
        float[] v = Check.uniform(72, 165 * heads * d);
        float[] dout = Check.uniform(73, v.length);
        agree("linear attention", 2e-5, 1e-4, o -> {
            Tensor tq = o.f(q, 165, heads * f);
            Tensor tk = o.f(k, 165, heads * f);
            Tensor tv = o.f(v, 165, heads * d);
            Varlen tcu = o.cu(cu);
            Tensor out = o.zeros(165, heads * d);
            o.be.linearAttentionForward(out, tq, tk, tv, tcu, heads, 1e-6f);
            // Backward accumulates onto what the gradients already hold.
            Tensor dq = o.f(Check.uniform(74, q.length), 165, heads * f);
            Tensor dk = o.f(Check.uniform(75, k.length), 165, heads * f);
            Tensor dv = o.f(Check.uniform(76, v.length), 165, heads * d);
            o.be.linearAttentionBackward(dq, dk, dv, o.f(dout, 165, heads * d), tq, tk, tv, tcu, heads, 1e-6f);
            // Decoding the last sequence from a state that already holds 5 tokens' worth.
            Tensor state = o.f(Check.uniform(77, heads * f * d, 0, 5), heads, f, d);
            Tensor norm = o.f(Check.uniform(78, heads * f, 1, 5), heads, f);
            Tensor stepOut = o.zeros(67, heads * d);
            o.be.linearAttentionStep(stepOut, state, norm, tq.view(98 * heads * f, 67, heads * f),
                    tk.view(98 * heads * f, 67, heads * f), tv.view(98 * heads * d, 67, heads * d), heads, 1e-6f);
            return new Tensor[] {out, dq, dk, dv, stepOut, state, norm};
        });
    }
}
