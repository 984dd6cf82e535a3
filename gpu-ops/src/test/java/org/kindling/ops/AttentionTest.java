package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.kindling.ops.Reference.widen;

import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;
import org.kindling.ops.cpu.CpuDevice;
import org.kindling.ops.reference.ReferenceDevice;

/**
 * FlashAttention against flash-attention's relative oracle: measured against the fp64
 * {@link Reference}, the fused kernel's max error must be at most 2× that of {@link NaiveAttention}
 * (same fp32 precision, materialized scores) for O and at most 3× for dQ, dK, dV. LSE is checked
 * against the reference directly (relative 1e-5).
 */
class AttentionTest {
    private static Device dev;

    @BeforeAll
    static void open() {
        dev = CpuDevice.open(3);
    }

    @AfterAll
    static void close() {
        dev.close();
    }

    static float[] gaussian(long seed, int n) {
        SplittableRandom r = new SplittableRandom(seed);
        float[] x = new float[n];
        for (int i = 0; i < n; i++) {
            // Box–Muller: normal data, as flash-attention's tests use (torch.randn).
            double u = 1 - r.nextDouble();
            x[i] = (float) (Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * r.nextDouble()));
        }
        return x;
    }

    record Run(float[] out, float[] lse, float[] dq, float[] dk, float[] dv) {
    }

    /** Fused forward + backward of one call on fresh tensors. */
    static Run fused(Device d, Attention a, float[] q, float[] k, float[] v, float[] dout, int[] cuQ, int[] cuK) {
        int tq = cuQ[cuQ.length - 1];
        Backend be = d.backend();
        try (Tensor tq_ = d.fromFloats(q, q.length); Tensor tk = d.fromFloats(k, k.length); Tensor tv = d.fromFloats(v, v.length);
             Tensor tdo = d.fromFloats(dout, dout.length); Tensor cq = d.fromInts(cuQ, cuQ.length);
             Tensor ck = d.fromInts(cuK, cuK.length); Tensor out = d.allocate(DType.F32, q.length);
             Tensor lse = d.allocate(DType.F32, a.heads() * tq); Tensor dq = d.allocate(DType.F32, q.length);
             Tensor dk = d.allocate(DType.F32, k.length); Tensor dv = d.allocate(DType.F32, v.length)) {
            Varlen vq = Varlen.of(cq, cuQ);
            Varlen vk = Varlen.of(ck, cuK);
            be.attentionForward(out, lse, tq_, tk, tv, vq, vk, a);
            be.attentionBackward(dq, dk, dv, tdo, tq_, tk, tv, out, lse, vq, vk, a);
            return new Run(out.toFloatArray(), lse.toFloatArray(), dq.toFloatArray(), dk.toFloatArray(), dv.toFloatArray());
        }
    }

    static Run naive(Attention a, float[] q, float[] k, float[] v, float[] dout, int[] cuQ, int[] cuK) {
        try (NaiveAttention na = new NaiveAttention(dev, a); Tensor tq = dev.fromFloats(q, q.length);
             Tensor tk = dev.fromFloats(k, k.length); Tensor tv = dev.fromFloats(v, v.length);
             Tensor tdo = dev.fromFloats(dout, dout.length); Tensor cq = dev.fromInts(cuQ, cuQ.length);
             Tensor ck = dev.fromInts(cuK, cuK.length); Tensor out = dev.allocate(DType.F32, q.length);
             Tensor dq = dev.allocate(DType.F32, q.length); Tensor dk = dev.allocate(DType.F32, k.length);
             Tensor dv = dev.allocate(DType.F32, v.length)) {
            na.forward(out, tq, tk, tv, Varlen.of(cq, cuQ), Varlen.of(ck, cuK));
            na.backward(dq, dk, dv, tdo, tq, tk, tv);
            return new Run(out.toFloatArray(), null, dq.toFloatArray(), dk.toFloatArray(), dv.toFloatArray());
        }
    }

    static double maxErr(double[] want, float[] got) {
        double m = 0;
        for (int i = 0; i < want.length; i++) {
            double e = Math.abs(got[i] - want[i]);
            if (Double.isNaN(e)) {
                return Double.POSITIVE_INFINITY;
            }
            m = Math.max(m, e);
        }
        return m;
    }

    static double maxAbs(double[] x) {
        double m = 0;
        for (double v : x) {
            m = Math.max(m, Math.abs(v));
        }
        return m;
    }

    /**
     * The oracle. A floor of 8 fp32 ulps at the data's unit scale (~1e-6) covers the cases where the
     * naive path is exact by construction (one key: its softmax gradient cancels to exactly 0).
     */
    static void assertOracle(String what, double[] ref, float[] fusedOut, float[] naiveOut, double factor) {
        double ef = maxErr(ref, fusedOut);
        double en = maxErr(ref, naiveOut);
        double floor = 8 * Math.ulp(1f) * Math.max(1, maxAbs(ref));
        assertTrue(ef <= factor * en + floor, String.format("%s: fused error %.3e > %.0f x naive error %.3e (+%.1e)",
                what, ef, factor, en, floor));
    }

    static void check(Attention a, int[] cuQ, int[] cuK, long seed) {
        int tq = cuQ[cuQ.length - 1];
        int tk = cuK[cuK.length - 1];
        float[] q = gaussian(seed, tq * a.heads() * a.headDim());
        float[] k = gaussian(seed + 1, tk * a.kvHeads() * a.headDim());
        float[] v = gaussian(seed + 2, tk * a.kvHeads() * a.headDim());
        float[] dout = gaussian(seed + 3, q.length);
        double[][] ref = Reference.attention(a, widen(q), widen(k), widen(v), cuQ, cuK);
        double[][] grad = Reference.attentionBackward(a, widen(dout), widen(q), widen(k), widen(v), cuQ, cuK);
        Run f = fused(dev, a, q, k, v, dout, cuQ, cuK);
        Run n = naive(a, q, k, v, dout, cuQ, cuK);
        assertOracle("out", ref[0], f.out(), n.out(), 2);
        assertOracle("dq", grad[0], f.dq(), n.dq(), 3);
        assertOracle("dk", grad[1], f.dk(), n.dk(), 3);
        assertOracle("dv", grad[2], f.dv(), n.dv(), 3);
        for (int i = 0; i < ref[1].length; i++) {
            double want = ref[1][i];
            if (want == Double.NEGATIVE_INFINITY) {
                assertEquals(Float.NEGATIVE_INFINITY, f.lse()[i], "lse " + i);
            } else {
                assertEquals(want, f.lse()[i], 1e-5 * (1 + Math.abs(want)), "lse " + i);
            }
        }
    }

    static int[] cu(int... lengths) {
        int[] c = new int[lengths.length + 1];
        for (int i = 0; i < lengths.length; i++) {
            c[i + 1] = c[i] + lengths[i];
        }
        return c;
    }

    static Stream<Arguments> denseShapes() {
        List<Arguments> out = new ArrayList<>();
        for (int seq : new int[] {1, 97, 128, 1025}) {
            for (int d : seq == 1025 ? new int[] {59, 128} : new int[] {59, 64, 111, 128}) {
                for (boolean causal : new boolean[] {false, true}) {
                    out.add(Arguments.of(seq, d, causal));
                }
            }
        }
        return out.stream();
    }

    @ParameterizedTest(name = "seq={0} d={1} causal={2}")
    @MethodSource("denseShapes")
    void denseMatchesOracle(int seq, int d, boolean causal) {
        check(Attention.of(2, 2, d).withCausal(causal), cu(seq), cu(seq), seq * 31L + d);
    }

    @ParameterizedTest(name = "causal={0}")
    @MethodSource("bools")
    void varlenBatchWithGroupedQueryAttention(boolean causal) {
        int[] c = cu(1, 17, 300);
        check(Attention.of(4, 2, 64).withCausal(causal), c, c, 7);
    }

    @ParameterizedTest(name = "causal={0}")
    @MethodSource("bools")
    void multiQueryAttentionAndWideHeads(boolean causal) {
        check(Attention.of(4, 1, 256).withCausal(causal), cu(97, 33), cu(97, 33), 8);
        check(Attention.of(3, 3, 1).withCausal(causal), cu(130), cu(130), 9);
    }

    @Test
    void queriesAttendingALongerKeyCacheAlignToTheEnd() {
        // Decoding: 1 new token against 300 cached keys, and 17 against 100.
        check(Attention.of(2, 1, 64).withCausal(true), cu(1, 17), cu(300, 100), 10);
        check(Attention.of(2, 1, 64), cu(1, 17), cu(300, 100), 11);
    }

    static Stream<Boolean> bools() {
        return Stream.of(false, true);
    }

    static Stream<Arguments> sparseLayouts() {
        int n = 1025;
        return Stream.of(
                Arguments.of("local window 1", BlockMask.localWindow(n, 128, 1), false),
                Arguments.of("local window 1", BlockMask.localWindow(n, 128, 1), true),
                Arguments.of("strided 3 + global 1", BlockMask.strided(n, 128, 3, 1), false),
                Arguments.of("strided 3 + global 1", BlockMask.strided(n, 128, 3, 1), true),
                Arguments.of("flat butterfly 4", BlockMask.flatButterfly(n, 128, 4), false),
                Arguments.of("flat butterfly 8, 256-blocks", BlockMask.flatButterfly(n, 256, 8), true));
    }

    @ParameterizedTest(name = "{0} causal={2}")
    @MethodSource("sparseLayouts")
    void blockSparseMatchesOracle(String name, BlockMask mask, boolean causal) {
        check(Attention.of(2, 1, 64).withCausal(causal).withMask(mask), cu(1025, 300), cu(1025, 300), 12);
    }

    @Test
    void denseBlockMaskGivesExactlyTheDenseResult() {
        int[] c = cu(1025, 17, 300);
        Attention a = Attention.of(2, 2, 59).withCausal(true);
        float[] q = gaussian(13, c[3] * 2 * 59);
        float[] k = gaussian(14, q.length);
        float[] v = gaussian(15, q.length);
        float[] dout = gaussian(16, q.length);
        for (int block : new int[] {128, 256}) {
            Run dense = fused(dev, a, q, k, v, dout, c, c);
            Run masked = fused(dev, a.withMask(BlockMask.dense(1025, block)), q, k, v, dout, c, c);
            assertArrayEquals(dense.out(), masked.out());
            assertArrayEquals(dense.lse(), masked.lse());
            assertArrayEquals(dense.dq(), masked.dq());
            assertArrayEquals(dense.dk(), masked.dk());
            assertArrayEquals(dense.dv(), masked.dv());
        }
    }

    @Test
    void sequencesInABatchNeverSeeEachOther() {
        int[] lengths = {300, 1, 17};
        Attention a = Attention.of(2, 1, 64).withCausal(true);
        int[] c = cu(lengths);
        int rowQ = 2 * 64;
        int rowK = 64;
        float[] q = gaussian(17, c[3] * rowQ);
        float[] k = gaussian(18, c[3] * rowK);
        float[] v = gaussian(19, c[3] * rowK);
        float[] dout = gaussian(20, q.length);
        Run all = fused(dev, a, q, k, v, dout, c, c);
        for (int b = 0; b < lengths.length; b++) {
            int[] one = cu(lengths[b]);
            Run alone = fused(dev, a, slice(q, c[b] * rowQ, lengths[b] * rowQ), slice(k, c[b] * rowK, lengths[b] * rowK),
                    slice(v, c[b] * rowK, lengths[b] * rowK), slice(dout, c[b] * rowQ, lengths[b] * rowQ), one, one);
            assertArrayEquals(alone.out(), slice(all.out(), c[b] * rowQ, lengths[b] * rowQ), "out of sequence " + b);
            assertArrayEquals(alone.dk(), slice(all.dk(), c[b] * rowK, lengths[b] * rowK), "dk of sequence " + b);
            assertArrayEquals(alone.dv(), slice(all.dv(), c[b] * rowK, lengths[b] * rowK), "dv of sequence " + b);
        }
    }

    private static float[] slice(float[] x, int from, int len) {
        float[] out = new float[len];
        System.arraycopy(x, from, out, 0, len);
        return out;
    }

    @Test
    void neverAllocatesAScoreMatrix() {
        int seq = 1025;
        Attention a = Attention.of(1, 1, 64).withCausal(true);
        float[] q = gaussian(21, seq * 64);
        try (Device d = CpuDevice.open(3); Tensor tq = d.fromFloats(q, seq, 1, 64); Tensor tk = d.fromFloats(gaussian(22, q.length), seq, 1, 64);
             Tensor tv = d.fromFloats(gaussian(23, q.length), seq, 1, 64); Tensor tdo = d.fromFloats(gaussian(24, q.length), seq, 1, 64);
             Tensor c = d.fromInts(cu(seq), 2); Tensor out = d.allocate(DType.F32, seq, 1, 64);
             Tensor lse = d.allocate(DType.F32, 1, seq); Tensor dq = d.allocate(DType.F32, seq, 1, 64);
             Tensor dk = d.allocate(DType.F32, seq, 1, 64); Tensor dv = d.allocate(DType.F32, seq, 1, 64)) {
            long matrix = (long) seq * seq * 4;
            long base = d.liveBytes();
            d.resetPeak();
            Varlen vc = Varlen.of(c, cu(seq));
            d.backend().attentionForward(out, lse, tq, tk, tv, vc, vc, a);
            long forward = d.peakBytes() - base;
            assertTrue(forward < matrix / 2, "forward's extra memory " + forward + " bytes is not far below one score matrix");
            // The device keeps the forward's scratch for later kernels; the backward's extra memory is counted beyond it.
            long kept = d.liveBytes();
            d.resetPeak();
            d.backend().attentionBackward(dq, dk, dv, tdo, tq, tk, tv, out, lse, vc, vc, a);
            long backward = d.peakBytes() - kept;
            assertTrue(backward < matrix / 2, "backward's extra memory " + backward + " bytes is not far below one score matrix");
            long steady = d.allocations();
            d.backend().attentionForward(out, lse, tq, tk, tv, vc, vc, a);
            d.backend().attentionBackward(dq, dk, dv, tdo, tq, tk, tv, out, lse, vc, vc, a);
            assertEquals(steady, d.allocations(), "a repeated pass reuses the device's scratch");
        }
    }

    @Test
    void sameThreadCountGivesBitIdenticalResults() {
        int[] c = cu(300, 129);
        Attention a = Attention.of(4, 1, 64).withCausal(true);
        float[] q = gaussian(25, c[2] * 4 * 64);
        float[] k = gaussian(26, c[2] * 64);
        float[] v = gaussian(27, c[2] * 64);
        float[] dout = gaussian(28, q.length);
        for (int threads : new int[] {1, 2, 3}) {
            Run first;
            Run second;
            try (Device d = CpuDevice.open(threads)) {
                first = fused(d, a, q, k, v, dout, c, c);
            }
            try (Device d = CpuDevice.open(threads)) {
                second = fused(d, a, q, k, v, dout, c, c);
            }
            assertArrayEquals(first.out(), second.out());
            assertArrayEquals(first.dq(), second.dq());
            assertArrayEquals(first.dk(), second.dk());
            assertArrayEquals(first.dv(), second.dv());
        }
    }

    @Test
    void backwardAccumulatesIntoGradients() {
        int[] c = cu(97);
        Attention a = Attention.of(2, 2, 32);
        float[] q = gaussian(29, 97 * 64);
        float[] prior = gaussian(30, q.length);
        Run clean = fused(dev, a, q, q, q, q, c, c);
        try (Tensor t = dev.fromFloats(q, q.length); Tensor cc = dev.fromInts(c, 2); Tensor out = dev.allocate(DType.F32, q.length);
             Tensor lse = dev.allocate(DType.F32, 2 * 97); Tensor dq = dev.fromFloats(prior, q.length);
             Tensor dk = dev.fromFloats(prior, q.length); Tensor dv = dev.fromFloats(prior, q.length)) {
            Varlen vc = Varlen.of(cc, c);
            dev.backend().attentionForward(out, lse, t, t, t, vc, vc, a);
            dev.backend().attentionBackward(dq, dk, dv, t, t, t, t, out, lse, vc, vc, a);
            double[] want = new double[q.length];
            for (int i = 0; i < q.length; i++) {
                want[i] = prior[i] + clean.dq()[i];
            }
            Check.close("dq accumulates", want, dq.toFloatArray(), 1e-5, 1e-5);
        }
    }

    @Test
    void queriesWithNoKeysGetZeroOutputAndGradient() {
        // Causal, 5 queries against 2 keys: the first 3 queries precede every key.
        Attention a = Attention.of(1, 1, 8).withCausal(true);
        check(a, cu(5), cu(2), 31);
        Run r = fused(dev, a, gaussian(32, 40), gaussian(33, 16), gaussian(34, 16), gaussian(35, 40), cu(5), cu(2));
        for (int i = 0; i < 3 * 8; i++) {
            assertEquals(0f, r.out()[i]);
            assertEquals(0f, r.dq()[i]);
        }
        assertEquals(Float.NEGATIVE_INFINITY, r.lse()[0]);
    }

    @Test
    void rejectsInconsistentCalls() {
        assertThrows(IllegalArgumentException.class, () -> Attention.of(3, 2, 64));
        assertThrows(IllegalArgumentException.class, () -> Attention.of(2, 2, 257));
        assertThrows(IllegalArgumentException.class, () -> BlockMask.dense(100, 64));
        assertThrows(IllegalArgumentException.class, () -> BlockMask.flatButterfly(100, 128, 3));
        Attention a = Attention.of(2, 1, 4);
        try (Tensor q = dev.allocate(DType.F32, 10, 2, 4); Tensor k = dev.allocate(DType.F32, 10, 1, 4);
             Tensor out = dev.allocate(DType.F32, 10, 2, 4); Tensor lse = dev.allocate(DType.F32, 2, 10);
             Tensor bad = dev.fromInts(new int[] {0, 6, 4, 10}, 4); Tensor shortT = dev.fromInts(new int[] {0, 9}, 2);
             Tensor goodT = dev.fromInts(new int[] {0, 4, 10}, 3); Tensor oneT = dev.fromInts(new int[] {0, 10}, 2)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Varlen.of(bad, new int[] {0, 6, 4, 10}));
            assertEquals("cu_seqlens[2] = 4 is less than cu_seqlens[1] = 6", e.getMessage());
            Varlen shortCu = Varlen.of(shortT, new int[] {0, 9});
            Varlen good = Varlen.of(goodT, new int[] {0, 4, 10});
            Varlen one = Varlen.of(oneT, new int[] {0, 10});
            e = assertThrows(IllegalArgumentException.class, () -> dev.backend().attentionForward(out, lse, q, k, k, shortCu, shortCu, a));
            assertEquals("cu_seqlens_q ends at 9 but q has 10 rows", e.getMessage());
            e = assertThrows(IllegalArgumentException.class, () -> dev.backend().attentionForward(out, lse, q, k, k, good,
                    one, a));
            assertTrue(e.getMessage().contains("sequences"), e.getMessage());
            assertThrows(IllegalArgumentException.class, () -> dev.backend().attentionForward(out, lse, q, q, q, good, good, a));
            Attention sparse = Attention.of(2, 1, 4).withMask(BlockMask.dense(10, 128));
            try (Tensor kqT = dev.fromInts(new int[] {0, 3, 10}, 3)) {
                Varlen kq = Varlen.of(kqT, new int[] {0, 3, 10});
                e = assertThrows(IllegalArgumentException.class, () -> dev.backend().attentionForward(out, lse, q, k, k, good, kq, sparse));
                assertTrue(e.getMessage().contains("equal query and key lengths"), e.getMessage());
            }
        }
    }

    /**
     * Host offsets travel with the device tensor: a host array whose length does not match the
     * tensor is refused at once, and the reference backend refuses host offsets that differ from
     * what the device holds, naming both.
     */
    @Test
    void hostOffsetsThatDoNotMatchTheDeviceTensorAreRefused() {
        try (Tensor cu = dev.fromInts(new int[] {0, 4, 10}, 3)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Varlen.of(cu, new int[] {0, 10}));
            assertTrue(e.getMessage().startsWith("cu_seqlens on the device must be I32 [2] like the host offsets"), e.getMessage());
        }
        Attention a = Attention.of(1, 1, 4);
        try (Device ref = ReferenceDevice.open(); Tensor q = ref.allocate(DType.F32, 10, 1, 4);
             Tensor out = ref.allocate(DType.F32, 10, 1, 4); Tensor lse = ref.allocate(DType.F32, 1, 10);
             Tensor cu = ref.fromInts(new int[] {0, 4, 10}, 3)) {
            Varlen stale = Varlen.of(cu, new int[] {0, 5, 10});
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> ref.backend().attentionForward(out, lse, q, q, q, stale, stale, a));
            assertEquals("cu_seqlens_q on the device [0, 4, 10] differ from the host offsets [0, 5, 10]", e.getMessage());
            Varlen agreeing = Varlen.of(cu, new int[] {0, 4, 10});
            ref.backend().attentionForward(out, lse, q, q, q, agreeing, agreeing, a);
            assertEquals(6, agreeing.maxSeqlen());
        }
    }
}
