package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.kindling.ops.Reference.widen;

import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;
import org.kindling.ops.cpu.CpuDevice;

/**
 * GEMM against the double reference. Tolerance: |C − ref| ≤ 1e-5·Σ_p|a_ip·b_pj| + 1e-6, a few
 * times the fp32 rounding of a K-term sum, far below any indexing or transpose mistake.
 */
class GemmTest {
    private static Device dev;

    @BeforeAll
    static void open() {
        dev = CpuDevice.open(3);
    }

    @AfterAll
    static void close() {
        dev.close();
    }

    static Stream<Arguments> shapes() {
        List<Arguments> out = new ArrayList<>();
        int[][] mnk = {{1, 1, 1}, {7, 59, 97}, {97, 7, 59}, {59, 97, 7}, {1025, 7, 59}, {7, 1025, 59},
            {97, 97, 1025}, {1, 1025, 7}, {130, 200, 97}};
        for (int[] s : mnk) {
            for (int t = 0; t < 4; t++) {
                out.add(Arguments.of(s[0], s[1], s[2], (t & 1) != 0, (t & 2) != 0));
            }
        }
        return out.stream();
    }

    static double[] bound(Gemm g, float[] a, int oa, float[] b, int ob, float[] c, int oc) {
        float[] absA = abs(a);
        float[] absB = abs(b);
        Gemm unit = g.scaled(Math.abs(g.alpha()), 0f);
        double[] mag = Reference.gemm(unit, widen(c), oc, widen(absA), oa, widen(absB), ob);
        for (int i = 0; i < mag.length; i++) {
            mag[i] = 1e-5 * mag[i] + 1e-6 + (g.beta() == 0f ? 0 : 1e-6 * Math.abs(g.beta() * c[oc + (i / g.n()) * g.ldc() + i % g.n()]));
        }
        return mag;
    }

    private static float[] abs(float[] x) {
        float[] out = new float[x.length];
        for (int i = 0; i < x.length; i++) {
            out[i] = Math.abs(x[i]);
        }
        return out;
    }

    /** Compares the M×N block of C laid out with ldc at offset oc. */
    static void assertGemm(String what, Gemm g, float[] a, int oa, float[] b, int ob, float[] c0, float[] c, int oc) {
        double[] want = Reference.gemm(g, widen(c0), oc, widen(a), oa, widen(b), ob);
        double[] tol = bound(g, a, oa, b, ob, c0, oc);
        for (int i = 0; i < g.m(); i++) {
            for (int j = 0; j < g.n(); j++) {
                double got = c[oc + i * g.ldc() + j];
                double err = Math.abs(got - want[i * g.n() + j]);
                if (!(err <= tol[i * g.n() + j])) {
                    throw new AssertionError(what + " " + g + ": C[" + i + "," + j + "] = " + got + ", expected "
                            + want[i * g.n() + j]);
                }
            }
        }
    }

    @ParameterizedTest(name = "m={0} n={1} k={2} tA={3} tB={4}")
    @MethodSource("shapes")
    void matchesReference(int m, int n, int k, boolean ta, boolean tb) {
        Gemm g = Gemm.of(ta, tb, m, n, k);
        float[] a = Check.uniform(1, m * k);
        float[] b = Check.uniform(2, k * n);
        try (Tensor tA = dev.fromFloats(a, m * k); Tensor tB = dev.fromFloats(b, k * n);
             Tensor tC = dev.allocate(DType.F32, m * n)) {
            dev.backend().gemm(g, tC, tA, tB);
            assertGemm("gemm", g, a, 0, b, 0, new float[m * n], tC.toFloatArray(), 0);
        }
    }

    @Test
    void alphaBetaLeadingDimensionsAndOffsets() {
        int m = 59;
        int n = 97;
        int k = 7;
        int lda = k + 3;
        int ldb = n + 5;
        int ldc = n + 1;
        Gemm g = Gemm.of(false, false, m, n, k).leading(lda, ldb, ldc).scaled(-0.5f, 2f);
        float[] a = Check.uniform(3, 4 + m * lda);
        float[] b = Check.uniform(4, 2 + k * ldb);
        float[] c0 = Check.uniform(5, 1 + m * ldc);
        try (Tensor tA = dev.fromFloats(a, a.length); Tensor tB = dev.fromFloats(b, b.length);
             Tensor tC = dev.fromFloats(c0, c0.length)) {
            dev.backend().gemm(g, tC.view(1, m * ldc), tA.view(4, m * lda), tB.view(2, k * ldb));
            float[] c = tC.toFloatArray();
            assertGemm("gemm with lda/ldb/ldc", g, a, 4, b, 2, c0, c, 1);
            // Padding between rows of C is left alone.
            for (int i = 0; i < m; i++) {
                for (int j = n; j < ldc; j++) {
                    int idx = 1 + i * ldc + j;
                    if (idx < c.length) {
                        assertTrue(c[idx] == c0[idx], "padding at " + idx + " changed");
                    }
                }
            }
        }
    }

    @ParameterizedTest(name = "batch={0} tA={1} tB={2}")
    @MethodSource("batchedCases")
    void stridedBatchedMatchesReferencePerMatrix(int batch, boolean ta, boolean tb) {
        int m = 17;
        int n = 59;
        int k = 33;
        Gemm g = Gemm.batched(batch, ta, tb, m, n, k).scaled(1.5f, 0f);
        float[] a = Check.uniform(6, batch * m * k);
        float[] b = Check.uniform(7, batch * k * n);
        try (Tensor tA = dev.fromFloats(a, batch, m * k); Tensor tB = dev.fromFloats(b, batch, k * n);
             Tensor tC = dev.allocate(DType.F32, batch, m * n)) {
            dev.backend().gemm(g, tC, tA, tB);
            float[] c = tC.toFloatArray();
            for (int i = 0; i < batch; i++) {
                assertGemm("batch " + i, g, a, i * m * k, b, i * k * n, new float[c.length], c, i * m * n);
            }
        }
    }

    static Stream<Arguments> batchedCases() {
        return Stream.of(Arguments.of(1, false, false), Arguments.of(2, true, false), Arguments.of(7, false, true),
                Arguments.of(97, true, true));
    }

    @Test
    void stridedBatchedWithBroadcastOperand() {
        // strideB = 0: every batch multiplies by the same B (a shared weight), as attention projections do.
        int batch = 5;
        int m = 7;
        int n = 9;
        int k = 11;
        Gemm g = Gemm.of(false, true, m, n, k).strided(batch, (long) m * k, 0, (long) m * n);
        float[] a = Check.uniform(8, batch * m * k);
        float[] b = Check.uniform(9, n * k);
        try (Tensor tA = dev.fromFloats(a, a.length); Tensor tB = dev.fromFloats(b, b.length);
             Tensor tC = dev.allocate(DType.F32, batch * m * n)) {
            dev.backend().gemm(g, tC, tA, tB);
            float[] c = tC.toFloatArray();
            for (int i = 0; i < batch; i++) {
                assertGemm("batch " + i, g, a, i * m * k, b, 0, new float[c.length], c, i * m * n);
            }
        }
    }

    @Test
    void batchedOverSeparateTensors() {
        int m = 59;
        int n = 7;
        int k = 97;
        Gemm g = Gemm.of(true, false, m, n, k);
        List<Tensor> as = new ArrayList<>();
        List<Tensor> bs = new ArrayList<>();
        List<Tensor> cs = new ArrayList<>();
        List<float[]> av = new ArrayList<>();
        List<float[]> bv = new ArrayList<>();
        try {
            for (int i = 0; i < 3; i++) {
                av.add(Check.uniform(10 + i, m * k));
                bv.add(Check.uniform(20 + i, k * n));
                as.add(dev.fromFloats(av.get(i), k, m));
                bs.add(dev.fromFloats(bv.get(i), k, n));
                cs.add(dev.allocate(DType.F32, m, n));
            }
            dev.backend().gemmBatched(g, cs, as, bs);
            for (int i = 0; i < 3; i++) {
                assertGemm("item " + i, g, av.get(i), 0, bv.get(i), 0, new float[m * n], cs.get(i).toFloatArray(), 0);
            }
            assertThrows(IllegalArgumentException.class, () -> dev.backend().gemmBatched(g, cs, as, bs.subList(0, 2)));
        } finally {
            Stream.of(as, bs, cs).flatMap(List::stream).forEach(Tensor::close);
        }
    }

    @Test
    void zeroKScalesC() {
        Gemm g = Gemm.of(false, false, 2, 3, 0).scaled(1f, 0.5f);
        try (Tensor a = dev.allocate(DType.F32, 0); Tensor b = dev.allocate(DType.F32, 0);
             Tensor c = dev.fromFloats(new float[] {2, 4, 6, 8, 10, 12}, 2, 3)) {
            dev.backend().gemm(g, c, a, b);
            assertArrayEquals(new float[] {1, 2, 3, 4, 5, 6}, c.toFloatArray());
        }
    }

    @Test
    void rejectsLayoutsThatDoNotFit() {
        assertThrows(IllegalArgumentException.class, () -> Gemm.of(false, false, 4, 4, 4).leading(3, 4, 4));
        assertThrows(IllegalArgumentException.class, () -> Gemm.of(false, false, -1, 4, 4));
        assertThrows(IllegalArgumentException.class, () -> Gemm.batched(2, false, false, 4, 4, 4).strided(2, 16, 16, 8));
        try (Tensor a = dev.allocate(DType.F32, 4, 4); Tensor b = dev.allocate(DType.F32, 4, 4);
             Tensor c = dev.allocate(DType.F32, 3, 4); Tensor ids = dev.allocate(DType.I32, 16)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> dev.backend().gemm(Gemm.of(false, false, 4, 4, 4), c, a, b));
            assertTrue(e.getMessage().contains("gemm C") && e.getMessage().contains("needs 16"), e.getMessage());
            assertThrows(IllegalArgumentException.class, () -> dev.backend().gemm(Gemm.of(false, false, 4, 4, 4), a, ids, b));
        }
    }

    @Test
    void reportsItsImplementation() {
        String expected = System.getProperty("kindling.expect.gemm");
        if (expected != null) {
            assertEquals(expected, dev.backend().gemmImpl());
        }
        assertTrue(List.of("openblas", "native", "vector", "java").contains(dev.backend().gemmImpl()));
    }

    private static float[] roundBf16(float[] x) {
        float[] r = new float[x.length];
        for (int i = 0; i < x.length; i++) {
            r[i] = BF16.toFloat(BF16.fromFloat(x[i]));
        }
        return r;
    }

    /**
     * BF16 A and B with F32 C: the fp64 product of the bf16-rounded operands, within the fp32
     * bound above (widening bf16 to float is exact, so only the fp32 accumulation errs), for
     * every transpose form at awkward sizes, batched with offsets, alpha and beta.
     */
    @ParameterizedTest(name = "m={0} n={1} k={2} tA={3} tB={4}")
    @MethodSource("shapes")
    void bf16OperandsMatchReferenceOnRoundedOperands(int m, int n, int k, boolean ta, boolean tb) {
        Gemm g = Gemm.of(ta, tb, m, n, k).scaled(0.75f, 0.5f);
        float[] a = Check.uniform(31, 1 + m * k);
        float[] b = Check.uniform(32, 2 + k * n);
        float[] c0 = Check.uniform(33, m * n);
        try (Tensor tA = dev.allocate(DType.BF16, a.length); Tensor tB = dev.allocate(DType.BF16, b.length);
             Tensor tC = dev.fromFloats(c0, m * n)) {
            tA.copyFrom(a);
            tB.copyFrom(b);
            dev.backend().gemm(g, tC, tA.view(1, m * k), tB.view(2, k * n));
            assertGemm("bf16 gemm", g, roundBf16(a), 1, roundBf16(b), 2, c0, tC.toFloatArray(), 0);
        }
    }

    /** The bf16 path is the fp32 path on widened operands: the same bits as F32 tensors holding the rounded values. */
    @Test
    void bf16BatchedEqualsF32OnRoundedOperandsBitForBit() {
        int batch = 3;
        int m = 59;
        int n = 97;
        int k = 33;
        Gemm g = Gemm.batched(batch, true, false, m, n, k);
        float[] a = roundBf16(Check.uniform(40, batch * m * k));
        float[] b = roundBf16(Check.uniform(41, batch * k * n));
        try (Tensor hA = dev.allocate(DType.BF16, a.length); Tensor hB = dev.allocate(DType.BF16, b.length);
             Tensor fA = dev.fromFloats(a, a.length); Tensor fB = dev.fromFloats(b, b.length);
             Tensor cH = dev.allocate(DType.F32, batch * m * n); Tensor cF = dev.allocate(DType.F32, batch * m * n)) {
            hA.copyFrom(a);
            hB.copyFrom(b);
            dev.backend().gemm(g, cH, hA, hB);
            dev.backend().gemm(g, cF, fA, fB);
            assertArrayEquals(cF.toFloatArray(), cH.toFloatArray());
            dev.backend().gemmBatched(Gemm.of(true, false, m, n, k), List.of(cH.view(0, m * n)), List.of(hA.view(0, m * k)),
                    List.of(hB.view(0, k * n)));
            assertArrayEquals(java.util.Arrays.copyOf(cF.toFloatArray(), m * n), java.util.Arrays.copyOf(cH.toFloatArray(), m * n),
                    "gemmBatched over BF16 tensors");
        }
    }

    /** Grouped GEMM (the experts' products) over BF16 A and B: per group the F32 result on the rounded operands, bit for bit. */
    @Test
    void bf16GroupedGemmEqualsF32OnRoundedOperands() {
        int rows = 97;
        int k = 59;
        int n = 33;
        int[] offsets = {0, 40, 40, 97};
        Gemm g = Gemm.of(false, true, rows, n, k);
        float[] a = roundBf16(Check.uniform(50, rows * k));
        float[] b = roundBf16(Check.uniform(51, 3 * n * k));
        try (Tensor hA = dev.allocate(DType.BF16, rows, k); Tensor hB = dev.allocate(DType.BF16, 3, n, k);
             Tensor fA = dev.fromFloats(a, rows, k); Tensor fB = dev.fromFloats(b, 3, n, k);
             Tensor cH = dev.allocate(DType.F32, rows, n); Tensor cF = dev.allocate(DType.F32, rows, n);
             Tensor off = dev.fromInts(offsets, offsets.length)) {
            hA.copyFrom(a);
            hB.copyFrom(b);
            dev.backend().groupedGemm(g, cH, hA, hB, off);
            dev.backend().groupedGemm(g, cF, fA, fB, off);
            assertArrayEquals(cF.toFloatArray(), cH.toFloatArray());
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> dev.backend().groupedGemm(g, cH, hA, fB, off));
            assertTrue(e.getMessage().contains("both F32 or both BF16"), e.getMessage());
        }
    }

    @Test
    void rejectsMixedOrIntegerOperandTypes() {
        try (Tensor h = dev.allocate(DType.BF16, 4, 4); Tensor f = dev.allocate(DType.F32, 4, 4);
             Tensor c = dev.allocate(DType.F32, 4, 4); Tensor hc = dev.allocate(DType.BF16, 4, 4)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> dev.backend().gemm(Gemm.of(false, false, 4, 4, 4), c, h, f));
            assertTrue(e.getMessage().contains("both F32 or both BF16"), e.getMessage());
            e = assertThrows(IllegalArgumentException.class, () -> dev.backend().gemm(Gemm.of(false, false, 4, 4, 4), hc, h, h));
            assertTrue(e.getMessage().contains("gemm C must be F32"), e.getMessage());
        }
    }
}
