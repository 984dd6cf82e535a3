package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.kindling.ops.AttentionTest.assertOracle;
import static org.kindling.ops.AttentionTest.gaussian;
import static org.kindling.ops.AttentionTest.maxAbs;
import static org.kindling.ops.AttentionTest.maxErr;
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
 * The TPP primitives: batch-reduce GEMM (list, offset and stride addressing, every transpose, leading
 * dimensions, alpha and beta, at awkward sizes), the block layout and the block-sparse linear
 * products, and transpose. Against the fp64 {@link Reference} twins the CPU's max error must be at
 * most 2× (outputs) or 3× (gradients) that of a naive fp32 loop written here from the definition;
 * the reference device, which runs the Backend defaults, gives the twins.
 */
class TppTest {
    private static Device cpu;
    private static Device ref;

    @BeforeAll
    static void open() {
        cpu = CpuDevice.open(3);
        ref = ReferenceDevice.open();
    }

    @AfterAll
    static void close() {
        cpu.close();
        ref.close();
    }

    // ---- batch-reduce GEMM ----

    static Stream<Arguments> brgemmCases() {
        List<Arguments> out = new ArrayList<>();
        for (boolean ta : new boolean[] {false, true}) {
            for (boolean tb : new boolean[] {false, true}) {
                for (int count : new int[] {1, 7}) {
                    out.add(Arguments.of(ta, tb, count));
                }
            }
        }
        return out.stream();
    }

    /** An awkward layout: M = 37, N = 19, K = 23, C's rows padded to 21, alpha 0.75, beta 0.5. */
    static Gemm awkward(boolean ta, boolean tb) {
        int m = 37;
        int n = 19;
        int k = 23;
        return Gemm.of(ta, tb, m, n, k).leading((ta ? m : k) + 2, (tb ? k : n) + 1, n + 2).scaled(0.75f, 0.5f);
    }

    static float[] naiveBrgemm(Gemm g, float[] c, float[][] a, float[][] b) {
        float[] out = c.clone();
        for (int i = 0; i < g.m(); i++) {
            for (int j = 0; j < g.n(); j++) {
                float s = 0;
                for (int p = 0; p < a.length; p++) {
                    for (int q = 0; q < g.k(); q++) {
                        float av = g.transA() ? a[p][q * g.lda() + i] : a[p][i * g.lda() + q];
                        float bv = g.transB() ? b[p][j * g.ldb() + q] : b[p][q * g.ldb() + j];
                        s += av * bv;
                    }
                }
                out[i * g.ldc() + j] = g.alpha() * s + g.beta() * c[i * g.ldc() + j];
            }
        }
        return out;
    }

    /** The twin over C's whole storage: elements outside the M × N window keep their values. */
    static double[] twinBrgemm(Gemm g, float[] c, float[][] a, float[][] b) {
        double[][] ad = new double[a.length][];
        double[][] bd = new double[b.length][];
        for (int p = 0; p < a.length; p++) {
            ad[p] = widen(a[p]);
            bd[p] = widen(b[p]);
        }
        double[] packed = Reference.brgemm(g, widen(c), 0, ad, bd);
        double[] out = widen(c);
        for (int i = 0; i < g.m(); i++) {
            System.arraycopy(packed, i * g.n(), out, i * g.ldc(), g.n());
        }
        return out;
    }

    static float[] runBrgemm(Device d, Gemm g, float[] c, float[][] a, float[][] b) {
        List<Tensor> as = new ArrayList<>();
        List<Tensor> bs = new ArrayList<>();
        try (Tensor ct = d.fromFloats(c, c.length)) {
            for (int p = 0; p < a.length; p++) {
                as.add(d.fromFloats(a[p], a[p].length));
                bs.add(d.fromFloats(b[p], b[p].length));
            }
            d.backend().brgemm(g, ct, as, bs);
            return ct.toFloatArray();
        } finally {
            as.forEach(Tensor::close);
            bs.forEach(Tensor::close);
        }
    }

    @ParameterizedTest(name = "transA={0} transB={1} count={2}")
    @MethodSource("brgemmCases")
    void brgemmMatchesOracle(boolean ta, boolean tb, int count) {
        Gemm g = awkward(ta, tb);
        float[] c = gaussian(1, (int) g.spanC());
        float[][] a = new float[count][];
        float[][] b = new float[count][];
        for (int p = 0; p < count; p++) {
            a[p] = gaussian(10 + p, (int) g.spanA());
            b[p] = gaussian(100 + p, (int) g.spanB());
        }
        double[] want = twinBrgemm(g, c, a, b);
        float[] naive = naiveBrgemm(g, c, a, b);
        assertTrue(maxErr(want, naive) <= 1e-4 * Math.max(1, maxAbs(want)), "the naive loop disagrees with the twin");
        assertOracle("brgemm", want, runBrgemm(cpu, g, c, a, b), naive, 2);
        double[] onRef;
        List<Tensor> as = new ArrayList<>();
        List<Tensor> bs = new ArrayList<>();
        try (Tensor ct = ref.fromFloats(c, c.length)) {
            for (int p = 0; p < count; p++) {
                as.add(ref.fromFloats(a[p], a[p].length));
                bs.add(ref.fromFloats(b[p], b[p].length));
            }
            ref.backend().brgemm(g, ct, as, bs);
            onRef = ct.toDoubleArray();
        } finally {
            as.forEach(Tensor::close);
            bs.forEach(Tensor::close);
        }
        for (int i = 0; i < want.length; i++) {
            assertEquals(want[i], onRef[i], 1e-12 * Math.max(1, Math.abs(want[i])), "reference device brgemm element " + i);
        }
    }

    @Test
    void offsetAndStrideAddressingEqualTheList() {
        Gemm g = awkward(false, true);
        int count = 5;
        long stride = g.spanA() + 3;
        float[] aAll = gaussian(3, (int) ((count - 1) * stride + g.spanA()));
        float[] bAll = gaussian(4, (int) (count * g.spanB()) + 11);
        float[] c = gaussian(5, (int) g.spanC());
        int[] bOffsets = {11, 0, (int) (3 * g.spanB()), 7, (int) g.spanB() + 2};
        float[][] a = new float[count][];
        float[][] b = new float[count][];
        for (int p = 0; p < count; p++) {
            a[p] = java.util.Arrays.copyOfRange(aAll, (int) (p * stride), (int) (p * stride + g.spanA()));
            b[p] = java.util.Arrays.copyOfRange(bAll, bOffsets[p], (int) (bOffsets[p] + g.spanB()));
        }
        float[] list = runBrgemm(cpu, g, c, a, b);
        try (Tensor ct = cpu.fromFloats(c, c.length); Tensor at = cpu.fromFloats(aAll, aAll.length);
             Tensor bt = cpu.fromFloats(bAll, bAll.length)) {
            cpu.backend().brgemm(g, ct, Brgemm.strided(at, count, stride, g.spanA()), Brgemm.offsets(bt, bOffsets, g.spanB()));
            assertArrayEquals(list, ct.toFloatArray());
            String bad = assertThrows(IllegalArgumentException.class,
                    () -> Brgemm.offsets(bt, new int[] {bAll.length - 1}, g.spanB())).getMessage();
            assertTrue(bad.contains("offset[0]"), bad);
            bad = assertThrows(IllegalArgumentException.class, () -> Brgemm.strided(at, count + 1, stride, g.spanA())).getMessage();
            assertTrue(bad.contains("does not fit"), bad);
        }
    }

    /** Pairs that lie side by side in one big A [M, count·K] and B [count·K, N] run without packing: the same sums. */
    @Test
    void pairsInPlaceEqualThePackedPairs() {
        int m = 33;
        int n = 17;
        int k = 9;
        int count = 6;
        Gemm g = Gemm.of(false, false, m, n, k).leading(count * k, n, n).scaled(1.5f, 0.25f);
        float[] aAll = gaussian(12, m * count * k);
        float[] bAll = gaussian(13, count * k * n);
        float[] c = gaussian(14, m * n);
        float[][] a = new float[count][];
        float[][] b = new float[count][];
        for (int p = 0; p < count; p++) {
            a[p] = java.util.Arrays.copyOfRange(aAll, p * k, (int) (p * k + g.spanA()));
            b[p] = java.util.Arrays.copyOfRange(bAll, p * k * n, (p + 1) * k * n);
        }
        float[] packed = runBrgemm(cpu, g, c, a, b);
        try (Tensor ct = cpu.fromFloats(c, c.length); Tensor at = cpu.fromFloats(aAll, aAll.length);
             Tensor bt = cpu.fromFloats(bAll, bAll.length)) {
            cpu.backend().brgemm(g, ct, Brgemm.strided(at, count, k, g.spanA()), Brgemm.strided(bt, count, (long) k * n, g.spanB()));
            assertArrayEquals(packed, ct.toFloatArray());
        }
        assertOracle("brgemm in place", twinBrgemm(g, c, a, b), packed, naiveBrgemm(g, c, a, b), 2);
    }

    @Test
    void badBrgemmCallsAreNamed() {
        Gemm g = Gemm.of(false, false, 4, 4, 4);
        try (Tensor c = cpu.allocate(DType.F32, 16); Tensor a = cpu.allocate(DType.F32, 16);
             Tensor b = cpu.allocate(DType.F32, 16); Tensor small = cpu.allocate(DType.F32, 15)) {
            Backend be = cpu.backend();
            assertMessage(() -> be.brgemm(g, c, List.of(), List.of()), "equal non-empty");
            assertMessage(() -> be.brgemm(g, c, List.of(a, a), List.of(b)), "equal non-empty");
            assertMessage(() -> be.brgemm(g, c, List.of(a, small), List.of(b, b)), "A[1]");
            assertMessage(() -> be.brgemm(g, c, List.of(a), List.of(c)), "overlaps operand pair 0");
            assertMessage(() -> be.brgemm(Gemm.batched(2, false, false, 2, 2, 2), c, List.of(a), List.of(b)), "batch 2");
        }
    }

    static void assertMessage(org.junit.jupiter.api.function.Executable call, String part) {
        String m = assertThrows(IllegalArgumentException.class, call).getMessage();
        assertTrue(m.contains(part), "'" + m + "' should name '" + part + "'");
    }

    // ---- block layout ----

    static BlockLayout random(int rowBlocks, int colBlocks, int bs, double keep, long seed) {
        SplittableRandom r = new SplittableRandom(seed);
        boolean[] on = new boolean[rowBlocks * colBlocks];
        for (int i = 0; i < on.length; i++) {
            on[i] = r.nextDouble() < keep;
        }
        return BlockLayout.of(rowBlocks, colBlocks, bs, (i, j) -> on[i * colBlocks + j]);
    }

    @Test
    void layoutCsrAndColumnViewAgreeWithTheRule() {
        BlockLayout l = random(5, 7, 16, 0.4, 9);
        int seen = 0;
        for (int r = 0; r < l.rowBlocks(); r++) {
            int prev = -1;
            for (int b = l.rowStart(r); b < l.rowStart(r + 1); b++) {
                assertTrue(l.col(b) > prev && l.contains(r, l.col(b)));
                prev = l.col(b);
                seen++;
            }
        }
        assertEquals(l.nnz(), seen);
        int inColumns = 0;
        for (int c = 0; c < l.colBlocks(); c++) {
            for (int e = l.colStart(c); e < l.colStart(c + 1); e++) {
                assertTrue(l.contains(l.rowOf(e), c));
                assertEquals(c, l.col(l.blockOf(e)));
                inColumns++;
            }
        }
        assertEquals(l.nnz(), inColumns);
        int[] rowPtr = new int[l.rowBlocks() + 1];
        int[] cols = new int[l.nnz()];
        for (int r = 0; r < l.rowBlocks(); r++) {
            rowPtr[r + 1] = l.rowStart(r + 1);
        }
        for (int b = 0; b < l.nnz(); b++) {
            cols[b] = l.col(b);
        }
        assertEquals(l, BlockLayout.fromCsr(5, 7, 16, rowPtr, cols));
        assertMessage(() -> BlockLayout.fromCsr(2, 3, 16, new int[] {0, 2, 3}, new int[] {1, 1, 0}), "colIdx[1] = 1");
        assertMessage(() -> BlockLayout.fromCsr(2, 3, 16, new int[] {0, 1, 2}, new int[] {3, 0}), "colIdx[0] = 3");
        assertMessage(() -> BlockLayout.fromCsr(2, 3, 16, new int[] {0, 1}, new int[] {0}), "rowPtr must have 3");
        assertMessage(() -> BlockLayout.of(0, 3, 16, (i, j) -> true), "at least one block row");
    }

    @Test
    void attentionMaskIsASquareLayout() {
        BlockMask m = BlockMask.flatButterfly(1000, 128, 4);
        BlockLayout l = m.layout();
        assertEquals(m.blocks(), l.rowBlocks());
        assertEquals(m.blocks(), l.colBlocks());
        for (int i = 0; i < m.blocks(); i++) {
            for (int j = 0; j < m.blocks(); j++) {
                assertEquals(m.allowed(i, j), l.contains(i, j));
            }
        }
        // 8 blocks, butterfly 4: i XOR j in {0, 1, 2} — 3 per row.
        assertEquals(3 * 8, l.nnz());
    }

    // ---- block-sparse linear ----

    record Sparse(BlockLayout l, int t, float[] x, float[] w, float[] dy, float[] dx0, float[] dw0) {
        static Sparse of(BlockLayout l, int t, long seed) {
            return new Sparse(l, t, gaussian(seed, t * l.cols()), gaussian(seed + 1, l.weightNumel()),
                    gaussian(seed + 2, t * l.rows()), gaussian(seed + 3, t * l.cols()), gaussian(seed + 4, l.weightNumel()));
        }

        /** The dense W [rows, cols] in fp32, zeros outside the layout. */
        float[] denseW() {
            double[] d = l.densify(widen(w));
            float[] f = new float[d.length];
            for (int i = 0; i < d.length; i++) {
                f[i] = (float) d[i];
            }
            return f;
        }
    }

    record Result(float[] y, float[] dx, float[] dw) {
    }

    static Result runSparse(Device d, Sparse s) {
        BlockLayout l = s.l();
        try (Tensor x = d.fromFloats(s.x(), s.t(), l.cols()); Tensor w = d.fromFloats(s.w(), s.w().length);
             Tensor y = d.fromFloats(gaussian(77, s.t() * l.rows()), s.t(), l.rows());
             Tensor dy = d.fromFloats(s.dy(), s.t(), l.rows()); Tensor dx = d.fromFloats(s.dx0(), s.t(), l.cols());
             Tensor dw = d.fromFloats(s.dw0(), s.dw0().length)) {
            Backend be = d.backend();
            be.blockSparseLinear(y, x, w, l);
            be.blockSparseLinearBackwardInput(dx, dy, w, l);
            be.blockSparseLinearBackwardWeight(dw, dy, x, l);
            return new Result(y.toFloatArray(), dx.toFloatArray(), dw.toFloatArray());
        }
    }

    /** The naive fp32 composition: densify W, then one in-order sum per element. */
    static Result naiveSparse(Sparse s) {
        BlockLayout l = s.l();
        int rows = l.rows();
        int cols = l.cols();
        float[] wd = s.denseW();
        float[] y = new float[s.t() * rows];
        float[] dx = s.dx0().clone();
        float[] dwDense = new float[rows * cols];
        for (int t = 0; t < s.t(); t++) {
            for (int o = 0; o < rows; o++) {
                float acc = 0;
                for (int i = 0; i < cols; i++) {
                    acc += s.x()[t * cols + i] * wd[o * cols + i];
                }
                y[t * rows + o] = acc;
            }
            for (int i = 0; i < cols; i++) {
                float acc = 0;
                for (int o = 0; o < rows; o++) {
                    acc += s.dy()[t * rows + o] * wd[o * cols + i];
                }
                dx[t * cols + i] += acc;
            }
        }
        for (int o = 0; o < rows; o++) {
            for (int i = 0; i < cols; i++) {
                float acc = 0;
                for (int t = 0; t < s.t(); t++) {
                    acc += s.dy()[t * rows + o] * s.x()[t * cols + i];
                }
                dwDense[o * cols + i] = acc;
            }
        }
        int bs = l.blockSize();
        float[] dw = s.dw0().clone();
        for (int r = 0; r < l.rowBlocks(); r++) {
            for (int b = l.rowStart(r); b < l.rowStart(r + 1); b++) {
                for (int i = 0; i < bs; i++) {
                    for (int j = 0; j < bs; j++) {
                        dw[(b * bs + i) * bs + j] += dwDense[(r * bs + i) * cols + l.col(b) * bs + j];
                    }
                }
            }
        }
        return new Result(y, dx, dw);
    }

    record Twin(double[] y, double[] dx, double[] dw) {
        static Twin of(Sparse s) {
            BlockLayout l = s.l();
            double[] dx = Reference.blockSparseLinearBackwardInput(l, widen(s.dy()), widen(s.w()));
            double[] dw = Reference.blockSparseLinearBackwardWeight(l, widen(s.dy()), widen(s.x()));
            for (int i = 0; i < dx.length; i++) {
                dx[i] += s.dx0()[i];
            }
            for (int i = 0; i < dw.length; i++) {
                dw[i] += s.dw0()[i];
            }
            return new Twin(Reference.blockSparseLinear(l, widen(s.x()), widen(s.w())), dx, dw);
        }
    }

    static Stream<Arguments> layouts() {
        return Stream.of(
                Arguments.of("all ones 16, 3x2", BlockLayout.dense(3, 2, 16), 37),
                Arguments.of("all ones 32, 2x3", BlockLayout.dense(2, 3, 32), 5),
                Arguments.of("random 16, 6x4", random(6, 4, 16, 0.5, 1), 41),
                Arguments.of("random 32, 3x5 (empty rows likely)", random(3, 5, 32, 0.3, 2), 29),
                Arguments.of("random 64, 2x3", random(2, 3, 64, 0.5, 3), 7),
                Arguments.of("flat butterfly 16, 8x8", BlockLayout.of(8, 8, 16, (i, j) -> Integer.bitCount(i ^ j) <= 1 && (i ^ j) < 4), 19),
                Arguments.of("one empty row and column", BlockLayout.of(3, 3, 16, (i, j) -> i != 1 && j != 2), 13),
                Arguments.of("butterfly stretched to 16x4, runs of 4 rows", stretched(16, 4), 23),
                Arguments.of("butterfly stretched to 4x16, runs of 1 row", stretched(4, 16), 11),
                Arguments.of("runs over consecutive and scattered columns, an empty run",
                        BlockLayout.of(6, 5, 16, (i, j) -> i < 2 ? j < 3 : i < 4 ? j % 2 == 0 : i == 5 && j == 4), 17),
                Arguments.of("columns too far apart to multiply their span", BlockLayout.of(4, 9, 16, (i, j) -> j == i || j == i + 5
                        || (i == 3 && j == 4)), 9));
    }

    /** The flat butterfly (strides 1 and 2) of the smaller side, each row or column repeated to fill the larger. */
    static BlockLayout stretched(int rowBlocks, int colBlocks) {
        int ratio = Math.max(rowBlocks, colBlocks) / Math.min(rowBlocks, colBlocks);
        return BlockLayout.of(rowBlocks, colBlocks, 16, (i, j) -> {
            int d = (rowBlocks > colBlocks ? i / ratio : i) ^ (colBlocks > rowBlocks ? j / ratio : j);
            return Integer.bitCount(d) <= 1 && d < 4;
        });
    }

    @Test
    void runsGroupConsecutiveRowsWithTheSameColumns() {
        BlockLayout l = stretched(16, 4);
        assertEquals(4, l.runs());
        for (int g = 0; g <= 4; g++) {
            assertEquals(4 * g, l.runStart(g));
        }
        BlockLayout mixed = BlockLayout.of(6, 5, 16, (i, j) -> i < 2 ? j < 3 : i < 4 ? j % 2 == 0 : i == 5 && j == 4);
        assertEquals(List.of(0, 2, 4, 5, 6), java.util.stream.IntStream.rangeClosed(0, mixed.runs()).map(mixed::runStart).boxed().toList());
    }

    @ParameterizedTest(name = "{0}, T={2}")
    @MethodSource("layouts")
    void blockSparseMatchesOracle(String name, BlockLayout l, int t) {
        Sparse s = Sparse.of(l, t, 17L * t);
        Twin want = Twin.of(s);
        Result naive = naiveSparse(s);
        assertTrue(maxErr(want.y(), naive.y()) <= 1e-4 * Math.max(1, maxAbs(want.y())), name + ": naive y disagrees");
        Result got = runSparse(cpu, s);
        assertOracle(name + " y", want.y(), got.y(), naive.y(), 2);
        assertOracle(name + " dx", want.dx(), got.dx(), naive.dx(), 3);
        assertOracle(name + " dw", want.dw(), got.dw(), naive.dw(), 3);
        Result onRef = runSparse(ref, s);
        assertOracle(name + " reference device y", want.y(), onRef.y(), naive.y(), 1);
        assertOracle(name + " reference device dx", want.dx(), onRef.dx(), naive.dx(), 1);
        assertOracle(name + " reference device dw", want.dw(), onRef.dw(), naive.dw(), 1);
    }

    @Test
    void allOnesLayoutEqualsTheDenseLinear() {
        BlockLayout l = BlockLayout.dense(2, 3, 32);
        Sparse s = Sparse.of(l, 23, 5);
        float[] wd = s.denseW();
        Result got = runSparse(cpu, s);
        try (Tensor x = cpu.fromFloats(s.x(), 23, l.cols()); Tensor w = cpu.fromFloats(wd, l.rows(), l.cols());
             Tensor y = cpu.allocate(DType.F32, 23, l.rows())) {
            cpu.backend().gemm(Gemm.of(false, true, 23, l.rows(), l.cols()), y, x, w);
            float[] dense = y.toFloatArray();
            for (int i = 0; i < dense.length; i++) {
                assertEquals(dense[i], got.y()[i], 1e-5 * Math.max(1, Math.abs(dense[i])), "y element " + i);
            }
        }
    }

    @Test
    void emptyBlockRowsOverwriteTheirOutputsWithZeros() {
        BlockLayout l = BlockLayout.of(2, 2, 16, (i, j) -> i == 0);
        Sparse s = Sparse.of(l, 9, 21);
        Result got = runSparse(cpu, s);
        for (int t = 0; t < 9; t++) {
            for (int o = 16; o < 32; o++) {
                assertEquals(0f, got.y()[t * 32 + o], "y of the empty block row");
            }
        }
    }

    @Test
    void badBlockSparseShapesAreNamed() {
        BlockLayout l = BlockLayout.dense(2, 3, 16);
        try (Tensor x = cpu.allocate(DType.F32, 4, 48); Tensor y = cpu.allocate(DType.F32, 4, 32);
             Tensor w = cpu.allocate(DType.F32, l.weightNumel()); Tensor wSmall = cpu.allocate(DType.F32, 16 * 16);
             Tensor xBad = cpu.allocate(DType.F32, 5, 48); Tensor shared = cpu.allocate(DType.F32, 400)) {
            Backend be = cpu.backend();
            assertMessage(() -> be.blockSparseLinear(y, xBad, w, l), "x");
            assertMessage(() -> be.blockSparseLinear(y, x, wSmall, l), "nnz·bs² = 1536");
            assertMessage(() -> be.blockSparseLinear(shared.view(0, 4, 32), shared.view(100, 4, 48), w, l), "must not overlap");
        }
    }

    @Test
    void profilerCountsTheWorkDone() {
        BlockLayout l = BlockLayout.of(2, 3, 16, (i, j) -> i != j);
        Gemm g = Gemm.of(false, false, 5, 6, 7);
        try (Tensor x = cpu.allocate(DType.F32, 9, 48); Tensor y = cpu.allocate(DType.F32, 9, 32);
             Tensor w = cpu.allocate(DType.F32, l.weightNumel()); Tensor a = cpu.allocate(DType.F32, 35);
             Tensor b = cpu.allocate(DType.F32, 42); Tensor c = cpu.allocate(DType.F32, 30)) {
            double blocks = 2.0 * 9 * 16 * 16 * l.nnz();
            assertEquals(blocks, ProfilingDevice.flops("blockSparseLinear", new Object[] {y, x, w, l}));
            assertEquals(blocks, ProfilingDevice.flops("blockSparseLinearBackwardInput", new Object[] {x, y, w, l}));
            assertEquals(blocks, ProfilingDevice.flops("blockSparseLinearBackwardWeight", new Object[] {w, y, x, l}));
            assertEquals(3 * g.flops(), ProfilingDevice.flops("brgemm", new Object[] {g, c, List.of(a, a, a), List.of(b, b, b)}));
            assertEquals(4.0 * (3 * (35 + 42) + 30), ProfilingDevice.bytes("brgemm",
                    new Object[] {g, c, List.of(a, a, a), List.of(b, b, b)}));
            assertEquals(0, ProfilingDevice.flops("transpose", new Object[] {c, c}));
        }
    }

    // ---- transpose ----

    @Test
    void transposeEqualsTheTwinExactly() {
        int n = 45;
        int c = 67;
        float[] x = gaussian(8, n * c);
        double[] want = Reference.transpose(widen(x), n, c);
        for (Device d : List.of(cpu, ref)) {
            // The reference device models no BF16 storage.
            for (DType dt : d == ref ? List.of(DType.F32) : List.of(DType.F32, DType.BF16)) {
                try (Tensor xt = d.allocate(dt, n, c); Tensor out = d.allocate(dt, c, n)) {
                    xt.copyFrom(x);
                    d.backend().transpose(out, xt);
                    double[] in = xt.toDoubleArray();
                    assertArrayEquals(Reference.transpose(in, n, c), out.toDoubleArray(), d + " " + dt);
                    if (dt == DType.F32) {
                        assertArrayEquals(want, out.toDoubleArray());
                    }
                }
            }
        }
        try (Tensor a = cpu.allocate(DType.F32, 4, 5); Tensor b = cpu.allocate(DType.F32, 21)) {
            assertMessage(() -> cpu.backend().transpose(b, a), "20 elements");
            assertMessage(() -> cpu.backend().transpose(a, a), "must not overlap");
        }
    }
}
