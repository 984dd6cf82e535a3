package org.kindling.ops.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.time.Duration;
import java.util.List;
import java.util.Optional;
import java.util.SplittableRandom;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.EnumSource;
import org.junit.jupiter.params.provider.MethodSource;
import org.junit.jupiter.params.provider.ValueSource;
import org.kindling.models.Gpt;
import org.kindling.models.channel.MlpSpec;
import org.kindling.models.channel.MoeSpec;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.Synthetic;
import org.kindling.models.nn.Precision;
import org.kindling.models.train.StepResult;
import org.kindling.models.train.Trainer;
import org.kindling.ops.AdamW;
import org.kindling.ops.Attention;
import org.kindling.ops.BF16;
import org.kindling.ops.Backend;
import org.kindling.ops.BinaryOp;
import org.kindling.ops.BlockMask;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.DropoutMask;
import org.kindling.ops.FavorFeatures;
import org.kindling.ops.Fence;
import org.kindling.ops.Gemm;
import org.kindling.ops.GroupedGemm;
import org.kindling.ops.HostFallback;
import org.kindling.ops.LinearAttention;
import org.kindling.ops.ReduceOp;
import org.kindling.ops.Reference;
import org.kindling.ops.Tensor;
import org.kindling.ops.UnaryOp;
import org.kindling.ops.Varlen;

/**
 * Every CUDA kernel against the fp64 {@link Reference} twins with the CPU kernels' fp32
 * tolerances, and one GPT training step on cuda against cpu. Runs only where a GPU is: elsewhere
 * every test is skipped, saying why.
 */
@Tag("gpu")
class CudaParityTest {
    private static final int[] SIZES = {1, 7, 59, 97, 1025, 97 * 1025};
    private static Device dev;
    private static Backend be;
    /** The fp32 CPU backend: the yardstick whose error against fp64 each fused CUDA kernel's error must stay near. */
    private static Device cpu;
    private static Backend cb;

    private static Optional<String> unavailable;

    @BeforeAll
    static void open() {
        unavailable = Device.provider("cuda").unavailable();
        if (unavailable.isEmpty()) {
            dev = Device.open("cuda");
            be = dev.backend();
            cpu = Device.open("cpu:2");
            cb = cpu.backend();
        }
    }

    /** Skipped per test, so reports count each skipped test and say why. */
    @BeforeEach
    void needsAGpu() {
        assumeTrue(unavailable.isEmpty(), () -> "cuda unavailable: " + unavailable.orElse(""));
    }

    @AfterAll
    static void close() {
        if (dev != null) {
            dev.close();
        }
        if (cpu != null) {
            cpu.close();
        }
    }

    private static float[] uniform(long seed, int n, double lo, double hi) {
        SplittableRandom r = new SplittableRandom(seed);
        float[] x = new float[n];
        for (int i = 0; i < n; i++) {
            x[i] = (float) (lo + (hi - lo) * r.nextDouble());
        }
        return x;
    }

    private static void close(String what, double[] want, float[] got, double tol) {
        assertEquals(want.length, got.length, what);
        for (int i = 0; i < want.length; i++) {
            if (!(Math.abs(got[i] - want[i]) <= tol + tol * Math.abs(want[i]))) {
                fail(what + ": element " + i + " is " + got[i] + ", expected " + want[i] + " (tolerance " + tol + ")");
            }
        }
    }

    /** Offloaded optimizer state: tensor views round-trip exactly through a page-locked store, across its buffers. */
    @Test
    void tensorViewsRoundTripThroughAPinnedHostStore() {
        for (int n : SIZES) {
            float[] x = uniform(n + 1, n + 5, -3, 3);
            try (Tensor a = dev.fromFloats(x, n + 5); Tensor back = dev.allocate(DType.F32, n);
                 org.kindling.ops.HostStore store = be.allocateStore(n + 11)) {
                be.copyToStore(store, 6, a.view(3, n));
                float[] host = new float[n + 11];
                store.get(0, host, 0, host.length);
                assertArrayEquals(java.util.Arrays.copyOfRange(x, 3, 3 + n), java.util.Arrays.copyOfRange(host, 6, 6 + n));
                be.copyFromStore(back, store, 6);
                assertArrayEquals(java.util.Arrays.copyOfRange(x, 3, 3 + n), back.toFloatArray());
            }
        }
    }

    @Test
    void fillCopyAndBf16ConversionAreExact() {
        for (int n : SIZES) {
            float[] x = uniform(n, n, -3, 3);
            try (Tensor a = dev.fromFloats(x, n); Tensor b = dev.allocate(DType.F32, n + 3);
                 Tensor h = dev.allocate(DType.BF16, n); Tensor back = dev.allocate(DType.F32, n);
                 Tensor ids = dev.allocate(DType.I32, n)) {
                assertArrayEquals(new float[n + 3], b.toFloatArray(), "zero-filled allocation");
                be.copy(b.view(2, n), a);
                float[] got = b.toFloatArray();
                assertEquals(0f, got[0]);
                assertArrayEquals(x, java.util.Arrays.copyOfRange(got, 2, 2 + n));
                be.copy(h, a);
                be.copy(back, h);
                float[] want = new float[n];
                for (int i = 0; i < n; i++) {
                    want[i] = BF16.toFloat(BF16.fromFloat(x[i]));
                }
                assertArrayEquals(want, back.toFloatArray(), "F32 → BF16 → F32 rounds to nearest even");
                be.fill(a, -1.25f);
                be.fill(ids, 7);
                for (float v : a.toFloatArray()) {
                    assertEquals(-1.25f, v);
                }
                for (int v : ids.toIntArray()) {
                    assertEquals(7, v);
                }
            }
        }
    }

    @ParameterizedTest
    @EnumSource(UnaryOp.class)
    void unaryMatchesReference(UnaryOp op) {
        boolean positive = op == UnaryOp.LOG || op == UnaryOp.SQRT || op == UnaryOp.RECIPROCAL;
        for (int n : SIZES) {
            float[] x = positive ? uniform(n, n, 0.05, 4) : uniform(n, n, -4, 4);
            try (Tensor tx = dev.fromFloats(x, n); Tensor out = dev.allocate(DType.F32, n)) {
                be.unary(op, out, tx);
                close(op + " n=" + n, Reference.unary(op, Reference.widen(x)), out.toFloatArray(), 2e-6);
                be.unary(op, tx, tx);
                assertArrayEquals(out.toFloatArray(), tx.toFloatArray(), "in place");
            }
        }
    }

    @Test
    void affineMatchesReference() {
        for (int n : SIZES) {
            float[] x = uniform(3, n, -1, 1);
            try (Tensor tx = dev.fromFloats(x, n); Tensor out = dev.allocate(DType.F32, n)) {
                be.affine(out, tx, -2.5f, 0.25f);
                double[] want = new double[n];
                for (int i = 0; i < n; i++) {
                    want[i] = -2.5 * x[i] + 0.25;
                }
                close("affine", want, out.toFloatArray(), 2e-6);
            }
        }
    }

    @ParameterizedTest
    @EnumSource(BinaryOp.class)
    void binaryWithAndWithoutRowBroadcastMatchesReference(BinaryOp op) {
        for (int[] rc : new int[][] {{1, 1}, {7, 59}, {97, 7}, {1025, 97}}) {
            for (boolean broadcast : new boolean[] {false, true}) {
                int n = rc[0] * rc[1];
                float[] a = uniform(4, n, -1, 1);
                float[] b = op == BinaryOp.DIV ? uniform(5, broadcast ? rc[1] : n, 0.5, 2) : uniform(5, broadcast ? rc[1] : n, -1, 1);
                try (Tensor ta = dev.fromFloats(a, rc[0], rc[1]); Tensor tb = dev.fromFloats(b, b.length);
                     Tensor out = dev.allocate(DType.F32, rc[0], rc[1])) {
                    be.binary(op, out, ta, tb);
                    close(op + " broadcast=" + broadcast, Reference.binary(op, Reference.widen(a), Reference.widen(b)),
                            out.toFloatArray(), 2e-6);
                }
            }
        }
    }

    @ParameterizedTest
    @EnumSource(ReduceOp.class)
    void reduceRowsMatchesReference(ReduceOp op) {
        for (int[] rc : new int[][] {{1, 1}, {7, 59}, {97, 7}, {1025, 97}, {3, 4099}}) {
            float[] x = uniform(6, rc[0] * rc[1], -1, 1);
            try (Tensor tx = dev.fromFloats(x, rc[0], rc[1]); Tensor out = dev.allocate(DType.F32, rc[0])) {
                be.reduceRows(op, out, tx);
                close(op + " " + rc[0] + "x" + rc[1], Reference.reduceRows(op, Reference.widen(x), rc[0], rc[1]),
                        out.toFloatArray(), 1e-6);
            }
        }
    }

    @Test
    void sumsStayOnTheDeviceAndMatchReference() {
        for (int n : SIZES) {
            float[] x = uniform(8, n, -1, 1);
            double[] w = Reference.widen(x);
            try (Tensor tx = dev.fromFloats(x, n); Tensor out = dev.fromFloats(new float[] {1f, 1f}, 2)) {
                be.addSum(out.view(0, 1), tx, 0.5f);
                be.addSumOfSquares(out.view(1, 1), tx, 2f);
                float[] got = out.toFloatArray();
                assertEquals((float) (1 + (float) (0.5 * Reference.sum(w))), got[0], 1e-6 * n);
                assertEquals((float) (1 + (float) (2 * Reference.sumOfSquares(w))), got[1], 1e-6 * n);
                assertEquals(Reference.sumOfSquares(w), be.sumOfSquares(tx), 1e-12 * n);
                // A fixed summation order: the same bits every time.
                assertEquals(be.sumOfSquares(tx), be.sumOfSquares(tx));
            }
        }
    }

    @Test
    void aFenceCompletesAfterTheKernelsBeforeIt() {
        int n = 1 << 24;
        try (Tensor a = dev.allocate(DType.F32, n)) {
            for (int i = 0; i < 20; i++) {
                be.unary(UnaryOp.EXP, a, a);
            }
            Fence f = dev.fence();
            assertTrue(f.await(Duration.ofSeconds(30)), "fence not done within 30 s");
            assertTrue(f.isDone());
        }
    }

    @Test
    void overlappingCopiesBehaveAsMemmove() {
        float[] x = uniform(9, 50, -1, 1);
        try (Tensor t = dev.fromFloats(x, 50)) {
            be.copy(t.view(5, 40), t.view(0, 40));
            float[] want = x.clone();
            System.arraycopy(x, 0, want, 5, 40);
            assertArrayEquals(want, t.toFloatArray());
        }
    }

    /**
     * A GPT training step on cuda (kernels plus host fallbacks) against cpu: the first step's loss
     * and gradient norm (before any update), and the second step's loss (after one AdamW update).
     * Aggregates, not parameters: Adam's first step moves a parameter by about lr·sign(g), so a
     * gradient near zero may flip sign between two correct fp32 devices.
     */
    @Test
    void twoGptTrainingStepsMatchTheCpu() {
        assertFalse(HostFallback.fallsBack(be, "gemm"));
        assertFalse(HostFallback.fallsBack(be, "binary"));
        StepResult[][] steps = twoGptSteps(ModelConfig.gpt(20, 32, 2, 4, 2, 64, 4, 0, 0.02, 1e-5), Precision.FP32);
        assertEquals(steps[0][0].loss(), steps[1][0].loss(), 1e-5 * Math.abs(steps[0][0].loss()), "first loss");
        assertEquals(steps[0][0].gradNorm(), steps[1][0].gradNorm(), 1e-4 * steps[0][0].gradNorm(), "first gradient norm");
        assertEquals(steps[0][1].loss(), steps[1][1].loss(), 1e-3 * Math.abs(steps[0][1].loss()), "second loss");
    }

    /**
     * precision: bf16 on cuda (tensor-core gemm_bf16 in the three transpose forms the layers use:
     * x·Wᵀ, dy·W, dyᵀ·x; grouped for the MoE experts) against the CPU's bf16 path. Both round the
     * same fp32 values to the same bf16 operands; only fp32 summation orders differ, and a 1-ulp
     * difference may move one rounded operand by 2^-9, hence bounds ten times the fp32 test's.
     */
    @Test
    void twoBf16GptTrainingStepsMatchTheCpu() {
        ModelConfig dense = ModelConfig.gpt(20, 32, 2, 4, 2, 64, 4, 0, 0.02, 1e-5);
        ModelConfig moe = dense.withChannelMixers(List.of(new MlpSpec(4), new MoeSpec(4, 64, 1, 0, 0.01, 0.001, 0)));
        for (ModelConfig model : List.of(dense, moe)) {
            StepResult[][] steps = twoGptSteps(model, Precision.BF16);
            assertEquals(steps[0][0].loss(), steps[1][0].loss(), 1e-4 * Math.abs(steps[0][0].loss()), "first loss");
            assertEquals(steps[0][0].gradNorm(), steps[1][0].gradNorm(), 1e-3 * steps[0][0].gradNorm(), "first gradient norm");
            assertEquals(steps[0][1].loss(), steps[1][1].loss(), 1e-2 * Math.abs(steps[0][1].loss()), "second loss");
        }
    }

    /** Two training steps of {@code model} on cpu:2 ([0]) and cuda ([1]) from the same seed and data. */
    private static StepResult[][] twoGptSteps(ModelConfig model, Precision precision) {
        TrainConfig train = new TrainConfig(7, 3e-3, 3e-4, 1, 10, 0.1, 0.9, 0.95, 1e-8, 1.0, 1, 512, 5, 0, 2).withPrecision(precision);
        StepResult[][] steps = new StepResult[2][2];
        String[] specs = {"cpu:2", "cuda"};
        for (int i = 0; i < 2; i++) {
            DataSource data = Synthetic.source(Synthetic.associativeRecall(20, 32, 64, 5), 4);
            try (Device d = Device.open(specs[i]); Gpt m = new Gpt(model, d, 7); Trainer t = new Trainer(m, train)) {
                steps[i][0] = t.step(data);
                steps[i][1] = t.step(data);
            }
        }
        return steps;
    }

    // ---- GEMM (gemm.cu) ----

    /** m, n, k: unit sizes, sizes off every tile multiple (97×59×1025), a k below one K step, several tiles. */
    private static final int[][] GEMM_SIZES = {{1, 1, 1}, {97, 59, 1025}, {59, 97, 1}, {1, 97, 59}, {1025, 1, 97},
        {130, 257, 33}, {97, 0, 7}, {5, 6, 0}};

    /**
     * A layout with padded leading dimensions and, for batch > 1, gaps between the matrices, so
     * the kernels must honour lda/ldb/ldc and the strides rather than assume packed operands.
     */
    private static Gemm padded(boolean ta, boolean tb, int m, int n, int k, int batch, float alpha, float beta) {
        Gemm g = Gemm.of(ta, tb, m, n, k).scaled(alpha, beta);
        g = g.leading(g.lda() + 3, g.ldb() + 5, g.ldc() + 2);
        return batch == 1 ? g : g.strided(batch, g.spanA() + 11, g.spanB() + 4, g.spanC() + 7);
    }

    /** Elements a buffer needs for every matrix of g (plus a lead of `lead` elements before the first). */
    private static int length(long span, long stride, int batch, int lead) {
        return lead + (int) (span == 0 ? 0 : (batch - 1) * stride + span) + 1;
    }

    /** The fp64 result over whole buffers: every C of the batch replaced, everything else kept. */
    private static double[] reference(Gemm g, double[] c, int oc, double[] a, int oa, double[] b, int ob) {
        double[] out = c.clone();
        for (int z = 0; z < g.batch(); z++) {
            int zc = oc + (int) (z * g.strideC());
            double[] r = Reference.gemm(g, c, zc, a, oa + (int) (z * g.strideA()), b, ob + (int) (z * g.strideB()));
            for (int i = 0; i < g.m(); i++) {
                for (int j = 0; j < g.n(); j++) {
                    out[zc + i * g.ldc() + j] = r[i * g.n() + j];
                }
            }
        }
        return out;
    }

    private static float[] bf16(float[] x) {
        float[] r = new float[x.length];
        for (int i = 0; i < x.length; i++) {
            r[i] = BF16.toFloat(BF16.fromFloat(x[i]));
        }
        return r;
    }

    /**
     * The naive bf16 GEMM the tensor-core path is held to: operands rounded to bf16, products
     * summed in fp32 in k order, alpha and beta applied in fp32; C outside the matrices kept.
     */
    private static float[] naiveBf16(Gemm g, float[] c, int oc, float[] a, int oa, float[] b, int ob) {
        float[] ra = bf16(a);
        float[] rb = bf16(b);
        float[] out = c.clone();
        for (int z = 0; z < g.batch(); z++) {
            int za = oa + (int) (z * g.strideA());
            int zb = ob + (int) (z * g.strideB());
            int zc = oc + (int) (z * g.strideC());
            for (int i = 0; i < g.m(); i++) {
                for (int j = 0; j < g.n(); j++) {
                    float s = 0;
                    for (int p = 0; p < g.k(); p++) {
                        float av = g.transA() ? ra[za + p * g.lda() + i] : ra[za + i * g.lda() + p];
                        float bv = g.transB() ? rb[zb + j * g.ldb() + p] : rb[zb + p * g.ldb() + j];
                        s += av * bv;
                    }
                    int at = zc + i * g.ldc() + j;
                    out[at] = g.beta() == 0f ? g.alpha() * s : g.alpha() * s + g.beta() * c[at];
                }
            }
        }
        return out;
    }

    private static double maxError(double[] want, float[] got) {
        double e = 0;
        for (int i = 0; i < want.length; i++) {
            double d = Math.abs(got[i] - want[i]);
            e = Double.isNaN(d) ? Double.POSITIVE_INFINITY : Math.max(e, d);
        }
        return e;
    }

    /** Runs g on the device over buffers A, B, C (C prefilled; NaN when beta = 0, which must not be read). */
    private static float[] runGemm(Gemm g, DType operands, float[] a, int oa, float[] b, int ob, float[] c, int oc) {
        try (Tensor ta = dev.allocate(operands, a.length); Tensor tb = dev.allocate(operands, b.length);
             Tensor tc = dev.fromFloats(c, c.length)) {
            ta.copyFrom(a);
            tb.copyFrom(b);
            be.gemm(g, tc.view(oc, c.length - oc), ta.view(oa, a.length - oa), tb.view(ob, b.length - ob));
            return tc.toFloatArray();
        }
    }

    /** C before the product: NaN where beta = 0 (the kernel must not read it), else random; the gaps random too. */
    private static float[] initialC(Gemm g, int length, long seed) {
        float[] c = uniform(seed, length, -1, 1);
        if (g.beta() == 0f) {
            for (int z = 0; z < g.batch(); z++) {
                for (int i = 0; i < g.m(); i++) {
                    for (int j = 0; j < g.n(); j++) {
                        c[1 + (int) (z * g.strideC()) + i * g.ldc() + j] = Float.NaN;
                    }
                }
            }
        }
        return c;
    }

    private static List<Gemm> gemmCases() {
        List<Gemm> cases = new java.util.ArrayList<>();
        for (boolean ta : new boolean[] {false, true}) {
            for (boolean tb : new boolean[] {false, true}) {
                for (int[] s : GEMM_SIZES) {
                    cases.add(Gemm.of(ta, tb, s[0], s[1], s[2]));
                    cases.add(padded(ta, tb, s[0], s[1], s[2], 1, -0.5f, 0.75f));
                }
                cases.add(padded(ta, tb, 97, 59, 1025, 3, 1f, 0f));
                cases.add(padded(ta, tb, 33, 130, 17, 4, 2f, 1f));
                cases.add(Gemm.batched(2, ta, tb, 129, 127, 64).scaled(0.5f, -1f));
            }
        }
        return cases;
    }

    @Test
    void gemmRunsOnTheDevice() {
        assertEquals("cuda", be.gemmImpl());
        assertFalse(HostFallback.fallsBack(be, "gemmBatched"));
        assertFalse(HostFallback.fallsBack(be, "groupedGemm"));
    }

    /** fp32: every transpose combination, awkward sizes, padded leading dimensions, batches with gaps, alpha/beta. */
    @Test
    void f32GemmMatchesReferenceForEveryLayout() {
        long seed = 100;
        for (Gemm g : gemmCases()) {
            // Operands start one element into their buffers and C has a lead element: offsets are honoured.
            float[] a = uniform(seed++, length(g.spanA(), g.strideA(), g.batch(), 1), -1, 1);
            float[] b = uniform(seed++, length(g.spanB(), g.strideB(), g.batch(), 1), -1, 1);
            float[] c = initialC(g, length(g.spanC(), g.strideC(), g.batch(), 1), seed++);
            float[] got = runGemm(g, DType.F32, a, 1, b, 1, c, 1);
            double[] want = reference(g, Reference.widen(c), 1, Reference.widen(a), 1, Reference.widen(b), 1);
            close("f32 " + g, want, got, 1e-6 * Math.max(1, g.k()));
            assertArrayEquals(got, runGemm(g, DType.F32, a, 1, b, 1, c, 1), "the same bits on a second run: " + g);
        }
    }

    /**
     * bf16 operands on tensor cores: against fp64 over the unrounded operands, the error may be at
     * most twice that of a naive bf16 GEMM (operands rounded to bf16, fp32 sums in k order) plus
     * fp32 rounding of the result; the fp32 accumulation must also be deterministic.
     */
    @Test
    void bf16GemmIsWithinTwiceTheNaiveBf16Error() {
        long seed = 500;
        for (Gemm g : gemmCases()) {
            float[] a = uniform(seed++, length(g.spanA(), g.strideA(), g.batch(), 1), -1, 1);
            float[] b = uniform(seed++, length(g.spanB(), g.strideB(), g.batch(), 1), -1, 1);
            float[] c = initialC(g, length(g.spanC(), g.strideC(), g.batch(), 1), seed++);
            float[] got = runGemm(g, DType.BF16, a, 1, b, 1, c, 1);
            double[] want = reference(g, Reference.widen(c), 1, Reference.widen(a), 1, Reference.widen(b), 1);
            double naive = maxError(want, naiveBf16(g, c, 1, a, 1, b, 1));
            double bound = 2 * naive + 1e-6 * Math.max(1, g.k());
            double err = maxError(want, got);
            assertTrue(err <= bound, "bf16 " + g + ": max error " + err + " exceeds twice the naive bf16 error " + naive);
            assertArrayEquals(got, runGemm(g, DType.BF16, a, 1, b, 1, c, 1), "the same bits on a second run: " + g);
        }
    }

    /** A large bf16 product spans many tiles and K steps; its error still stays within the rule. */
    @Test
    void largeBf16GemmIsWithinTwiceTheNaiveBf16Error() {
        Gemm g = Gemm.of(false, true, 515, 389, 2049);
        float[] a = uniform(900, (int) g.spanA(), -1, 1);
        float[] b = uniform(901, (int) g.spanB(), -1, 1);
        float[] c = new float[(int) g.spanC()];
        float[] got = runGemm(g, DType.BF16, a, 0, b, 0, c, 0);
        double[] want = reference(g, Reference.widen(c), 0, Reference.widen(a), 0, Reference.widen(b), 0);
        double naive = maxError(want, naiveBf16(g, c, 0, a, 0, b, 0));
        assertTrue(maxError(want, got) <= 2 * naive + 1e-6 * g.k(), "max error " + maxError(want, got) + ", naive " + naive);
    }

    @Test
    void gemmBatchedMatchesGemmPerTriple() {
        Gemm g = padded(true, false, 97, 59, 130, 1, 1.5f, 0.5f);
        int span = length(g.spanC(), 0, 1, 0);
        try (Tensor a = dev.fromFloats(uniform(20, 3 * (int) g.spanA(), -1, 1), 3 * (int) g.spanA());
             Tensor b = dev.fromFloats(uniform(21, 3 * (int) g.spanB(), -1, 1), 3 * (int) g.spanB());
             Tensor c = dev.fromFloats(uniform(22, 3 * span, -1, 1), 3 * span);
             Tensor each = dev.fromFloats(c.toFloatArray(), 3 * span)) {
            List<Tensor> as = List.of(a.view(0, (int) g.spanA()), a.view(2 * (int) g.spanA(), (int) g.spanA()),
                    a.view((int) g.spanA(), (int) g.spanA()));
            List<Tensor> bs = List.of(b.view((int) g.spanB(), (int) g.spanB()), b.view(0, (int) g.spanB()),
                    b.view(2 * (int) g.spanB(), (int) g.spanB()));
            be.gemmBatched(g, List.of(c.view(0, span), c.view(span, span), c.view(2 * span, span)), as, bs);
            for (int i = 0; i < 3; i++) {
                be.gemm(g, each.view(i * span, span), as.get(i), bs.get(i));
            }
            assertArrayEquals(each.toFloatArray(), c.toFloatArray());
            double[] want = Reference.gemm(g, Reference.widen(uniform(22, 3 * span, -1, 1)), span,
                    Reference.widen(a.toFloatArray()), 2 * (int) g.spanA(), Reference.widen(b.toFloatArray()), 0);
            float[] all = c.toFloatArray();
            float[] got = new float[g.m() * g.n()];
            for (int i = 0; i < g.m(); i++) {
                System.arraycopy(all, span + i * g.ldc(), got, i * g.n(), g.n());
            }
            close("gemmBatched[1]", want, got, 1e-6 * g.k());
        }
    }

    /**
     * Both grouped forms with empty groups (first, middle, last): against the fp64 reference, and
     * bit for bit what gemm gives for each group's product, as Backend.groupedGemm promises.
     */
    @Test
    void groupedGemmBothFormsWithEmptyGroupsMatchReferenceAndPerGroupGemm() {
        int[] offsets = {0, 0, 37, 37, 130, 131, 131};
        int rows = 131;
        int experts = offsets.length - 1;
        int m = 24;
        int n = 19;
        int k = 40;
        for (int form = 0; form < 3; form++) {
            Gemm g = switch (form) {
                case 0 -> Gemm.of(false, false, rows, n, k).scaled(1f, 0f);
                case 1 -> Gemm.of(false, true, rows, n, k).scaled(-1f, 0.5f);
                default -> Gemm.of(true, false, m, n, rows).scaled(1f, 1f);
            };
            int na = g.transA() ? rows * m : rows * k;
            int nb = g.transA() ? rows * n : experts * k * n;
            int nc = g.transA() ? experts * m * n : rows * n;
            float[] a = uniform(30 + form, na, -1, 1);
            float[] b = uniform(40 + form, nb, -1, 1);
            float[] c = uniform(50 + form, nc, -1, 1);
            try (Tensor ta = dev.fromFloats(a, na); Tensor tb = dev.fromFloats(b, nb); Tensor tc = dev.fromFloats(c, nc);
                 Tensor each = dev.fromFloats(c, nc); Tensor off = dev.fromInts(offsets, offsets.length)) {
                be.groupedGemm(g, tc, ta, tb, off);
                GroupedGemm gg = new GroupedGemm(g, offsets);
                for (int e = 0; e < experts; e++) {
                    if (gg.runs(e)) {
                        be.gemm(gg.group(e), gg.c(each, e), gg.a(ta, e), gg.b(tb, e));
                    }
                }
                float[] got = tc.toFloatArray();
                assertArrayEquals(each.toFloatArray(), got, "form " + form + ": per-group gemm");
                double[] want = Reference.groupedGemm(gg, Reference.widen(c), Reference.widen(a), Reference.widen(b));
                close("grouped form " + form, want, got, 1e-6 * Math.max(k, rows));
            }
        }
    }

    @Test
    void gemmRejectsMixedOperandsAndShortBuffers() {
        Gemm g = Gemm.of(false, false, 4, 5, 6);
        try (Tensor a = dev.allocate(DType.F32, 24); Tensor b = dev.allocate(DType.BF16, 30);
             Tensor fb = dev.allocate(DType.F32, 30); Tensor c = dev.allocate(DType.F32, 20)) {
            IllegalArgumentException mixed = assertThrows(IllegalArgumentException.class, () -> be.gemm(g, c, a, b));
            assertTrue(mixed.getMessage().contains("both F32 or both BF16"), mixed.getMessage());
            IllegalArgumentException span = assertThrows(IllegalArgumentException.class,
                    () -> be.gemm(g, c, a, fb.view(0, 29)));
            assertTrue(span.getMessage().contains("needs 30"), span.getMessage());
            IllegalArgumentException out = assertThrows(IllegalArgumentException.class,
                    () -> be.gemm(g, b.view(0, 20), a, fb));
            assertTrue(out.getMessage().contains("gemm C"), out.getMessage());
        }
    }

    // ---- transformer kernels (nn.cu) ----
    //
    // The project's rule for fused kernels: against the fp64 Reference, a CUDA kernel's largest error
    // may be at most 2× (outputs) or 3× (gradients) that of an fp32 implementation, here the CPU
    // backend on the same inputs, plus a floor of 8 fp32 ulps at the data's scale for the cases
    // where the fp32 result happens to be exact. Gradients start from random values, so each
    // backward kernel is checked to accumulate.

    private static final String[] NN_OPS = {"softmaxForward", "softmaxBackward", "layerNormForward", "layerNormBackward",
        "geluForward", "geluBackward", "dropoutForward", "dropoutBackward", "embeddingForward", "embeddingBackward",
        "crossEntropyForward", "crossEntropyForwardBackward", "adamW", "attentionForward", "attentionBackward",
        "addColumnSums"};

    static Stream<Arguments> rowsCols() {
        return Stream.of(Arguments.of(1, 1), Arguments.of(7, 59), Arguments.of(97, 59), Arguments.of(97, 1025),
                Arguments.of(3, 4099), Arguments.of(1025, 7));
    }

    private static double maxErr(double[] want, float[] got) {
        assertEquals(want.length, got.length);
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

    private static void oracle(String what, double[] ref, float[] gpu, float[] fp32, double factor) {
        double eg = maxErr(ref, gpu);
        double ec = maxErr(ref, fp32);
        double scale = 1;
        for (double v : ref) {
            scale = Math.max(scale, Math.abs(v));
        }
        double floor = 8 * Math.ulp(1f) * scale;
        assertTrue(eg <= factor * ec + floor, String.format("%s: cuda error %.3e > %.0f x fp32 cpu error %.3e (+%.1e)",
                what, eg, factor, ec, floor));
    }

    private static double[] plus(double[] a, float[] b) {
        double[] out = new double[a.length];
        for (int i = 0; i < a.length; i++) {
            out[i] = a[i] + b[i];
        }
        return out;
    }

    private static int[] ints(long seed, int n, int bound) {
        SplittableRandom r = new SplittableRandom(seed);
        int[] x = new int[n];
        for (int i = 0; i < n; i++) {
            x[i] = r.nextInt(bound);
        }
        return x;
    }

    @Test
    void noTransformerKernelFallsBackToTheHost() {
        for (String op : NN_OPS) {
            assertFalse(HostFallback.fallsBack(be, op), op + " falls back to the host");
        }
    }

    @ParameterizedTest(name = "{0}x{1}")
    @MethodSource("rowsCols")
    void softmaxMatchesReferenceInPlaceAndAccumulates(int rows, int cols) {
        int n = rows * cols;
        float[] x = uniform(11, n, -6, 6);
        x[0] = Float.NEGATIVE_INFINITY; // a masked element
        float[] dy = uniform(12, n, -1, 1);
        float[] prior = uniform(13, n, -1, 1);
        double[] ref = Reference.softmax(Reference.widen(x), rows, cols);
        try (Tensor tx = dev.fromFloats(x, rows, cols); Tensor y = dev.allocate(DType.F32, rows, cols);
             Tensor tdy = dev.fromFloats(dy, rows, cols); Tensor dx = dev.fromFloats(prior, rows, cols);
             Tensor cx = cpu.fromFloats(x, rows, cols); Tensor cy = cpu.allocate(DType.F32, rows, cols);
             Tensor cdy = cpu.fromFloats(dy, rows, cols); Tensor cdx = cpu.fromFloats(prior, rows, cols)) {
            be.softmaxForward(y, tx);
            cb.softmaxForward(cy, cx);
            float[] got = y.toFloatArray();
            oracle("softmax " + rows + "x" + cols, ref, got, cy.toFloatArray(), 2);
            be.softmaxBackward(dx, tdy, y);
            cb.softmaxBackward(cdx, cdy, cy);
            double[] g = plus(Reference.softmaxBackwardFromOutput(Reference.widen(dy), ref, rows, cols), prior);
            oracle("softmax dx " + rows + "x" + cols, g, dx.toFloatArray(), cdx.toFloatArray(), 3);
            be.softmaxForward(tx, tx);
            assertArrayEquals(got, tx.toFloatArray(), "in place gives the same bits");
        }
    }

    @Test
    void softmaxOfAFullyMaskedRowIsZero() {
        float[] x = {Float.NEGATIVE_INFINITY, Float.NEGATIVE_INFINITY, Float.NEGATIVE_INFINITY, 0f, 1f, 2f};
        try (Tensor tx = dev.fromFloats(x, 2, 3); Tensor y = dev.fromFloats(new float[] {5, 5, 5, 5, 5, 5}, 2, 3)) {
            be.softmaxForward(y, tx);
            float[] got = y.toFloatArray();
            assertArrayEquals(new float[] {0, 0, 0}, java.util.Arrays.copyOf(got, 3));
            assertEquals(1.0, got[3] + got[4] + got[5], 1e-6);
        }
    }

    @ParameterizedTest(name = "{0}x{1}")
    @MethodSource("rowsCols")
    void layerNormMatchesReferenceAndAccumulates(int rows, int cols) {
        int n = rows * cols;
        float[] x = uniform(21, n, -3, 5);
        float[] w = uniform(22, cols, 0.5, 1.5);
        float[] b = uniform(23, cols, -1, 1);
        float[] dy = uniform(24, n, -1, 1);
        float[] prior = uniform(25, n, -1, 1);
        float[] priorW = uniform(26, cols, -1, 1);
        float[] priorB = uniform(27, cols, -1, 1);
        float eps = 1e-5f;
        double[][] ref = Reference.layerNorm(Reference.widen(x), Reference.widen(w), Reference.widen(b), rows, cols, eps);
        double[][] g = Reference.layerNormBackward(Reference.widen(dy), Reference.widen(x), Reference.widen(w), rows, cols, eps);
        float[][] got = new float[6][];
        float[][] fp32 = new float[6][];
        for (Device d : new Device[] {dev, cpu}) {
            Backend k = d.backend();
            try (Tensor tx = d.fromFloats(x, rows, cols); Tensor tw = d.fromFloats(w, cols); Tensor tb = d.fromFloats(b, cols);
                 Tensor out = d.allocate(DType.F32, rows, cols); Tensor mean = d.allocate(DType.F32, rows);
                 Tensor rstd = d.allocate(DType.F32, rows); Tensor tdy = d.fromFloats(dy, rows, cols);
                 Tensor dx = d.fromFloats(prior, rows, cols); Tensor dw = d.fromFloats(priorW, cols);
                 Tensor db = d.fromFloats(priorB, cols)) {
                k.layerNormForward(out, mean, rstd, tx, tw, tb, eps);
                k.layerNormBackward(dx, dw, db, tdy, tx, tw, mean, rstd);
                float[][] r = d == dev ? got : fp32;
                r[0] = out.toFloatArray();
                r[1] = mean.toFloatArray();
                r[2] = rstd.toFloatArray();
                r[3] = dx.toFloatArray();
                r[4] = dw.toFloatArray();
                r[5] = db.toFloatArray();
                if (d == dev) {
                    // Fixed-order sums: a second backward adds exactly the same gradient again.
                    try (Tensor dw2 = d.fromFloats(priorW, cols); Tensor db2 = d.fromFloats(priorB, cols);
                         Tensor dx2 = d.fromFloats(prior, rows, cols)) {
                        k.layerNormBackward(dx2, dw2, db2, tdy, tx, tw, mean, rstd);
                        assertArrayEquals(r[3], dx2.toFloatArray(), "deterministic dx");
                        assertArrayEquals(r[4], dw2.toFloatArray(), "deterministic dweight");
                        assertArrayEquals(r[5], db2.toFloatArray(), "deterministic dbias");
                    }
                }
            }
        }
        String at = " " + rows + "x" + cols;
        oracle("layerNorm out" + at, ref[0], got[0], fp32[0], 2);
        oracle("layerNorm mean" + at, ref[1], got[1], fp32[1], 2);
        oracle("layerNorm rstd" + at, ref[2], got[2], fp32[2], 2);
        oracle("layerNorm dx" + at, plus(g[0], prior), got[3], fp32[3], 3);
        oracle("layerNorm dweight" + at, plus(g[1], priorW), got[4], fp32[4], 3);
        oracle("layerNorm dbias" + at, plus(g[2], priorB), got[5], fp32[5], 3);
    }

    @ParameterizedTest(name = "n={0}")
    @ValueSource(ints = {1, 7, 59, 97, 1025, 97 * 1025})
    void geluMatchesReferenceInPlaceAndAccumulates(int n) {
        float[] x = uniform(41, n, -6, 6);
        if (n > 3) {
            x[0] = 60f;   // exp(2u) overflows: GELU(x) = x
            x[1] = -60f;  // exp(2u) underflows: GELU(x) = 0
            x[2] = 0f;
        }
        float[] dy = uniform(42, n, -1, 1);
        float[] prior = uniform(43, n, -1, 1);
        try (Tensor tx = dev.fromFloats(x, n); Tensor out = dev.allocate(DType.F32, n); Tensor tdy = dev.fromFloats(dy, n);
             Tensor dx = dev.fromFloats(prior, n); Tensor cx = cpu.fromFloats(x, n); Tensor cout = cpu.allocate(DType.F32, n);
             Tensor cdy = cpu.fromFloats(dy, n); Tensor cdx = cpu.fromFloats(prior, n)) {
            be.geluForward(out, tx);
            cb.geluForward(cout, cx);
            float[] got = out.toFloatArray();
            oracle("gelu n=" + n, Reference.gelu(Reference.widen(x)), got, cout.toFloatArray(), 2);
            be.geluBackward(dx, tdy, tx);
            cb.geluBackward(cdx, cdy, cx);
            oracle("gelu dx n=" + n, plus(Reference.geluBackward(Reference.widen(dy), Reference.widen(x)), prior),
                    dx.toFloatArray(), cdx.toFloatArray(), 3);
            be.geluForward(tx, tx);
            assertArrayEquals(got, tx.toFloatArray(), "in place gives the same bits");
        }
    }

    /** The mask bits: dropout of ones gives 1/(1 − p) exactly where DropoutMask keeps, 0 elsewhere. */
    @Test
    void dropoutMaskIsBitIdenticalToDropoutMask() {
        int n = 97 * 1025;
        float[] ones = new float[n];
        java.util.Arrays.fill(ones, 1f);
        long[] seeds = {0, 1, 1234, -1, Long.MIN_VALUE, Long.MAX_VALUE, 0x9E3779B97F4A7C15L};
        float[] ps = {0f, 1e-7f, 0.1f, 0.3f, 0.5f, 0.999f};
        try (Tensor t = dev.fromFloats(ones, n); Tensor out = dev.allocate(DType.F32, n + 5)) {
            for (long seed : seeds) {
                for (float p : ps) {
                    float scale = 1f / (1f - p);
                    // A view at an offset: the mask follows the element index within the tensor, not the storage.
                    be.dropoutForward(out.view(5, n), t, p, seed);
                    float[] got = out.toFloatArray();
                    for (int i = 0; i < n; i++) {
                        float want = DropoutMask.keeps(seed, i, p) ? scale : 0f;
                        if (got[5 + i] != want) {
                            fail("seed " + seed + " p " + p + ": element " + i + " is " + got[5 + i] + ", DropoutMask gives " + want);
                        }
                    }
                }
            }
        }
    }

    @ParameterizedTest(name = "n={0}")
    @ValueSource(ints = {1, 7, 59, 97, 1025, 97 * 1025})
    void dropoutMatchesTheCpuAndBackwardUsesTheSameMask(int n) {
        float p = 0.3f;
        long seed = -8_070_450_532_247_928_832L;
        float[] x = uniform(81, n, -1, 1);
        float[] dy = uniform(82, n, -1, 1);
        float[] prior = uniform(83, n, -1, 1);
        try (Tensor tx = dev.fromFloats(x, n); Tensor out = dev.allocate(DType.F32, n); Tensor tdy = dev.fromFloats(dy, n);
             Tensor dx = dev.fromFloats(prior, n); Tensor cx = cpu.fromFloats(x, n); Tensor cout = cpu.allocate(DType.F32, n);
             Tensor cdy = cpu.fromFloats(dy, n); Tensor cdx = cpu.fromFloats(prior, n)) {
            be.dropoutForward(out, tx, p, seed);
            cb.dropoutForward(cout, cx, p, seed);
            assertArrayEquals(cout.toFloatArray(), out.toFloatArray(), "forward: the CPU's bits");
            be.dropoutBackward(dx, tdy, p, seed);
            cb.dropoutBackward(cdx, cdy, p, seed);
            assertArrayEquals(cdx.toFloatArray(), dx.toFloatArray(), "backward: the CPU's bits");
            close("dropout dx", plus(Reference.dropout(Reference.widen(dy), p, seed), prior), dx.toFloatArray(), 1e-6);
            be.dropoutForward(tx, tx, 0f, 99);
            assertArrayEquals(x, tx.toFloatArray(), "p = 0 keeps everything, in place");
            assertThrows(IllegalArgumentException.class, () -> be.dropoutForward(out, tx, 1f, 0));
        }
    }

    @ParameterizedTest(name = "{0}x{1}")
    @MethodSource("rowsCols")
    void embeddingGathersExactlyAndScatterAddsInTokenOrder(int tokens, int cols) {
        int vocab = 59;
        float[] table = uniform(51, vocab * cols, -1, 1);
        int[] ids = ints(52, tokens, tokens > 7 ? 5 : vocab); // many tokens share few ids
        if (tokens > 1) {
            ids[tokens - 1] = vocab - 1;
        }
        float[] dout = uniform(53, tokens * cols, -1, 1);
        float[] prior = uniform(54, vocab * cols, -1, 1);
        try (Tensor tt = dev.fromFloats(table, vocab, cols); Tensor tids = dev.fromInts(ids, tokens);
             Tensor out = dev.allocate(DType.F32, tokens, cols); Tensor tdout = dev.fromFloats(dout, tokens, cols);
             Tensor dt = dev.fromFloats(prior, vocab, cols); Tensor cids = cpu.fromInts(ids, tokens);
             Tensor cdout = cpu.fromFloats(dout, tokens, cols); Tensor cdt = cpu.fromFloats(prior, vocab, cols)) {
            be.embeddingForward(out, tids, tt);
            close("embedding", Reference.embedding(ids, Reference.widen(table), cols), out.toFloatArray(), 0);
            be.embeddingBackward(dt, tdout, tids);
            cb.embeddingBackward(cdt, cdout, cids);
            assertArrayEquals(cdt.toFloatArray(), dt.toFloatArray(), "the CPU's token-order sums, bit for bit");
            close("embedding dtable", plus(Reference.embeddingBackward(Reference.widen(dout), ids, vocab, cols), prior),
                    dt.toFloatArray(), 1e-5);
        }
    }

    @Test
    void embeddingRejectsOutOfRangeIds() {
        try (Tensor table = dev.allocate(DType.F32, 5, 3); Tensor ids = dev.fromInts(new int[] {0, 5}, 2);
             Tensor out = dev.allocate(DType.F32, 2, 3)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> be.embeddingForward(out, ids, table));
            assertTrue(e.getMessage().contains("ids[1] = 5"), e.getMessage());
            e = assertThrows(IllegalArgumentException.class, () -> be.embeddingBackward(table, out, ids));
            assertTrue(e.getMessage().contains("ids[1] = 5"), e.getMessage());
        }
    }

    @ParameterizedTest(name = "{0}x{1}")
    @MethodSource("rowsCols")
    void crossEntropyForwardFusedAndInPlaceMatchReference(int rows, int vocab) {
        float[] logits = uniform(61, rows * vocab, -8, 8);
        int[] targets = ints(62, rows, vocab);
        int ignore = -100;
        for (int r = 1; r < rows; r += 3) {
            targets[r] = ignore;
        }
        float scale = 1f / rows;
        double[] wantLoss = Reference.crossEntropy(Reference.widen(logits), targets, rows, vocab, ignore);
        double[] wantGrad = Reference.crossEntropyBackward(Reference.widen(logits), targets, rows, vocab, ignore, scale);
        float[] garbage = uniform(63, rows * vocab, -1, 1);
        try (Tensor tl = dev.fromFloats(logits, rows, vocab); Tensor tt = dev.fromInts(targets, rows);
             Tensor losses = dev.allocate(DType.F32, rows); Tensor dl = dev.fromFloats(garbage, rows, vocab);
             Tensor cl = cpu.fromFloats(logits, rows, vocab); Tensor ct = cpu.fromInts(targets, rows);
             Tensor closses = cpu.allocate(DType.F32, rows); Tensor cdl = cpu.fromFloats(garbage, rows, vocab)) {
            String at = " " + rows + "x" + vocab;
            be.crossEntropyForward(losses, tl, tt, ignore);
            cb.crossEntropyForward(closses, cl, ct, ignore);
            float[] loss = losses.toFloatArray();
            oracle("loss" + at, wantLoss, loss, closses.toFloatArray(), 2);
            be.fill(losses, 7f);
            be.crossEntropyForwardBackward(losses, dl, tl, tt, ignore, scale);
            cb.crossEntropyForwardBackward(closses, cdl, cl, ct, ignore, scale);
            assertArrayEquals(loss, losses.toFloatArray(), "the fused pass's losses are the forward's");
            float[] grad = dl.toFloatArray();
            oracle("dlogits" + at, wantGrad, grad, cdl.toFloatArray(), 3);
            for (int r = 1; r < rows; r += 3) {
                assertEquals(0f, loss[r], "ignored row " + r);
            }
            be.crossEntropyForwardBackward(losses, tl, tl, tt, ignore, scale);
            assertArrayEquals(grad, tl.toFloatArray(), "in place: dlogits overwrite the logits, same bits");
            assertArrayEquals(loss, losses.toFloatArray(), "in place: same losses");
        }
    }

    @Test
    void crossEntropyNamesTheBadTargetAndIsStableForHugeLogits() {
        try (Tensor logits = dev.allocate(DType.F32, 3, 4); Tensor targets = dev.fromInts(new int[] {0, 3, 4}, 3);
             Tensor losses = dev.allocate(DType.F32, 3)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> be.crossEntropyForward(losses, logits, targets, -1));
            assertTrue(e.getMessage().contains("targets[2] = 4"), e.getMessage());
        }
        try (Tensor logits = dev.fromFloats(new float[] {1e30f, -1e30f, 0f, 80f, 90f, 100f}, 2, 3);
             Tensor targets = dev.fromInts(new int[] {0, 1}, 2); Tensor losses = dev.allocate(DType.F32, 2)) {
            be.crossEntropyForward(losses, logits, targets, -1);
            float[] l = losses.toFloatArray();
            assertEquals(0f, l[0], 0f);
            assertEquals(10f, l[1], 1e-3f);
        }
    }

    @ParameterizedTest(name = "n={0}")
    @ValueSource(ints = {1, 7, 59, 97, 1025, 97 * 1025})
    void adamWMatchesTheCpuWithinAnUlp(int n) {
        float[] p = uniform(71, n, -1, 1);
        float[] g = uniform(72, n, -1, 1);
        float[] m = uniform(73, n, -0.1, 0.1);
        float[] v = uniform(74, n, 0, 0.01);
        AdamW step = new AdamW(3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 7, 0.5f);
        try (Tensor tp = dev.fromFloats(p, n); Tensor tg = dev.fromFloats(g, n); Tensor tm = dev.fromFloats(m, n);
             Tensor tv = dev.fromFloats(v, n); Tensor cp = cpu.fromFloats(p, n); Tensor cg = cpu.fromFloats(g, n);
             Tensor cm = cpu.fromFloats(m, n); Tensor cv = cpu.fromFloats(v, n)) {
            be.adamW(tp, tg, tm, tv, step);
            cb.adamW(cp, cg, cm, cv, step);
            String[] names = {"params", "m", "v"};
            float[][] got = {tp.toFloatArray(), tm.toFloatArray(), tv.toFloatArray()};
            float[][] want = {cp.toFloatArray(), cm.toFloatArray(), cv.toFloatArray()};
            for (int k = 0; k < 3; k++) {
                for (int i = 0; i < n; i++) {
                    if (!(Math.abs(got[k][i] - want[k][i]) <= Math.ulp(want[k][i]))) {
                        fail("adamW " + names[k] + "[" + i + "] is " + got[k][i] + ", the CPU gives " + want[k][i]);
                    }
                }
            }
            double[][] ref = Reference.adamW(Reference.widen(p), Reference.widen(g), Reference.widen(m), Reference.widen(v), step);
            close("adamW params", ref[0], got[0], 1e-5);
            assertArrayEquals(g, tg.toFloatArray(), "gradients are left as they were");
        }
    }

    // ---- mixture of experts, RMSNorm, unary backward and noise (moe.cu) ----

    private static final String[] MOE_OPS = {"topK", "topKBackward", "expertOffsets", "permutation", "gatherRows",
        "scatterAddRows", "entryTokens", "capacitySlots", "scaleRows", "uniformNoise", "rmsNormForward", "rmsNormBackward",
        "unaryBackward"};

    /** T × E × k at awkward sizes: one token, sizes off every block multiple, one expert, k ≤ E. */
    static Stream<Arguments> tokensExpertsK() {
        Stream.Builder<Arguments> b = Stream.builder();
        for (int t : new int[] {1, 97, 1025}) {
            for (int e : new int[] {1, 3, 8}) {
                for (int k : new int[] {1, 2}) {
                    if (k <= e) {
                        b.add(Arguments.of(t, e, k));
                    }
                }
            }
        }
        return b.build();
    }

    /** A device tensor over {@code values} that starts 3 elements into its storage, so kernels must honour offsets. */
    private static Tensor offsetFloats(List<Tensor> keep, float[] values, int... shape) {
        Tensor whole = dev.allocate(DType.F32, values.length + 5);
        keep.add(whole);
        return whole.view(3, shape).copyFrom(values);
    }

    private static Tensor offsetInts(List<Tensor> keep, int[] values, int... shape) {
        Tensor whole = dev.allocate(DType.I32, values.length + 5);
        keep.add(whole);
        return whole.view(3, shape).copyFrom(values);
    }

    private static void closeAll(List<Tensor> tensors) {
        for (Tensor t : tensors) {
            t.close();
        }
    }

    /** Scores on a coarse grid (many ties, −0 beside +0) so the lower-expert-first rule is exercised. */
    private static float[] tiedScores(long seed, int n) {
        float[] x = uniform(seed, n, -2, 2);
        for (int i = 0; i < n; i++) {
            x[i] = Math.round(x[i] * 2) / 2f;
            if (x[i] == 0f && i % 2 == 1) {
                x[i] = -0f;
            }
        }
        return x;
    }

    @Test
    void noMoeKernelFallsBackToTheHost() {
        for (String op : MOE_OPS) {
            assertFalse(HostFallback.fallsBack(be, op), op + " falls back to the host");
        }
    }

    @ParameterizedTest(name = "T={0} E={1} k={2}")
    @MethodSource("tokensExpertsK")
    void topKAndItsBackwardMatchTheCpuExactly(int t, int e, int k) {
        float[] x = tiedScores(101 + t + e, t * e);
        float[] dv = uniform(102, t * k, -1, 1);
        float[] prior = uniform(103, t * e, -1, 1);
        List<Tensor> keep = new java.util.ArrayList<>();
        try (Tensor cx = cpu.fromFloats(x, t, e); Tensor cv = cpu.allocate(DType.F32, t, k);
             Tensor ci = cpu.allocate(DType.I32, t, k); Tensor cdv = cpu.fromFloats(dv, t, k);
             Tensor cdx = cpu.fromFloats(prior, t, e)) {
            Tensor gx = offsetFloats(keep, x, t, e);
            Tensor gv = offsetFloats(keep, new float[t * k], t, k);
            Tensor gi = offsetInts(keep, new int[t * k], t, k);
            be.topK(gv, gi, gx, k);
            cb.topK(cv, ci, cx, k);
            String at = " T=" + t + " E=" + e + " k=" + k;
            assertArrayEquals(Reference.topK(Reference.widen(x), e, k), gi.toIntArray(), "indices" + at);
            assertArrayEquals(ci.toIntArray(), gi.toIntArray(), "the CPU's indices" + at);
            assertArrayEquals(cv.toFloatArray(), gv.toFloatArray(), "the CPU's values" + at);
            Tensor gdx = offsetFloats(keep, prior, t, e);
            be.topKBackward(gdx, offsetFloats(keep, dv, t, k), gi);
            cb.topKBackward(cdx, cdv, ci);
            assertArrayEquals(cdx.toFloatArray(), gdx.toFloatArray(), "topKBackward: the CPU's bits" + at);
            close("topKBackward" + at, plus(Reference.topKBackward(Reference.widen(dv), ci.toIntArray(), t, e, k), prior),
                    gdx.toFloatArray(), 1e-6);
        } finally {
            closeAll(keep);
        }
    }

    @Test
    void topKNamesTheNaNAndTopKBackwardTheBadId() {
        float[] x = {0, 1, 2, 3, 4, 5, Float.NaN, 7, 8, 9, 10, Float.NaN};
        try (Tensor tx = dev.fromFloats(x, 3, 4); Tensor v = dev.allocate(DType.F32, 3, 2);
             Tensor i = dev.allocate(DType.I32, 3, 2);
             Tensor dx = dev.allocate(DType.F32, 3, 4); Tensor bad = dev.fromInts(new int[] {0, 1, 2, 3, 4, 0}, 3, 2)) {
            IllegalArgumentException ex = assertThrows(IllegalArgumentException.class, () -> be.topK(v, i, tx, 2));
            assertTrue(ex.getMessage().contains("x[1, 2] is NaN"), ex.getMessage());
            assertThrows(IllegalArgumentException.class, () -> be.topK(v, i, tx, 5));
            ex = assertThrows(IllegalArgumentException.class, () -> be.topKBackward(dx, v, bad));
            assertTrue(ex.getMessage().contains("indices[4] = 4"), ex.getMessage());
        }
    }

    @ParameterizedTest(name = "T={0} E={1} k={2}")
    @MethodSource("tokensExpertsK")
    void expertOffsetsPermutationAndCapacityMatchTheReferenceExactly(int t, int e, int k) {
        int n = t * k;
        for (boolean skewed : new boolean[] {false, true}) {
            // Skewed: every entry but the last on expert 0 (empty experts, one full), else uniform ids.
            int[] ids = skewed ? new int[n] : ints(111 + n + e, n, e);
            if (skewed) {
                ids[n - 1] = e - 1;
            }
            int[] wantOffsets = Reference.expertOffsets(ids, e);
            int[] wantOrder = Reference.permutation(ids, e);
            String at = " T=" + t + " E=" + e + " k=" + k + (skewed ? " skewed" : "");
            List<Tensor> keep = new java.util.ArrayList<>();
            try {
                Tensor gids = offsetInts(keep, ids, n);
                Tensor offsets = offsetInts(keep, new int[e + 1], e + 1);
                Tensor order = offsetInts(keep, new int[n], n);
                be.expertOffsets(offsets, gids, e);
                assertArrayEquals(wantOffsets, offsets.toIntArray(), "offsets" + at);
                be.permutation(order, gids, offsets);
                assertArrayEquals(wantOrder, order.toIntArray(), "stable order" + at);
                for (int capacity : new int[] {1, Math.max(1, n / e), n + 1}) {
                    Tensor slots = offsetInts(keep, new int[e * capacity], e * capacity);
                    be.capacitySlots(slots, order, offsets, capacity);
                    int[] want = Reference.capacitySlots(wantOrder, wantOffsets, capacity);
                    assertArrayEquals(want, slots.toIntArray(), "capacity " + capacity + at);
                    Tensor rows = offsetInts(keep, new int[e * capacity], e * capacity);
                    be.entryTokens(rows, slots, k);
                    assertArrayEquals(Reference.entryTokens(want, k), rows.toIntArray(), "entryTokens" + at);
                    be.entryTokens(slots, slots, k);
                    assertArrayEquals(rows.toIntArray(), slots.toIntArray(), "entryTokens in place" + at);
                }
            } finally {
                closeAll(keep);
            }
        }
    }

    @Test
    void routingOpsNameTheBadIdOrOffset() {
        try (Tensor ids = dev.fromInts(new int[] {0, 2, 3, 1}, 4); Tensor offsets = dev.allocate(DType.I32, 4);
             Tensor order = dev.allocate(DType.I32, 4); Tensor good = dev.fromInts(new int[] {0, 2, 1, 1}, 4);
             Tensor wrong = dev.fromInts(new int[] {0, 1, 2, 4}, 4); Tensor slots = dev.allocate(DType.I32, 6);
             Tensor decreasing = dev.fromInts(new int[] {0, 3, 2, 4}, 4); Tensor entries = dev.fromInts(new int[] {0, -2}, 2);
             Tensor tokens = dev.allocate(DType.I32, 2)) {
            IllegalArgumentException ex = assertThrows(IllegalArgumentException.class, () -> be.expertOffsets(offsets, ids, 3));
            assertTrue(ex.getMessage().contains("indices[2] = 3"), ex.getMessage());
            ex = assertThrows(IllegalArgumentException.class, () -> be.permutation(order, good, wrong));
            assertTrue(ex.getMessage().contains("offsets[2] = 2"), ex.getMessage());
            ex = assertThrows(IllegalArgumentException.class, () -> be.capacitySlots(slots, order, decreasing, 2));
            assertTrue(ex.getMessage().contains("offsets[2] = 2 is below"), ex.getMessage());
            ex = assertThrows(IllegalArgumentException.class, () -> be.entryTokens(tokens, entries, 2));
            assertTrue(ex.getMessage().contains("entries[1] = -2"), ex.getMessage());
        }
    }

    @ParameterizedTest(name = "T={0}")
    @ValueSource(ints = {1, 97, 1025})
    void gatherScatterAndScaleRowsMatchTheCpuBitForBit(int t) {
        int c = 59;
        int n = 2 * t + 3;
        // Entries: many per token (repeated destinations, out of order) and empty slots.
        int[] rows = ints(121 + t, n, t);
        for (int i = 0; i < n; i += 5) {
            rows[i] = -1;
        }
        float[] x = uniform(122, t * c, -1, 1);
        float[] mapped = uniform(123, n * c, -1, 1);
        float[] w = uniform(124, n, -2, 2);
        float[] prior = uniform(125, t * c, -1, 1);
        double[] wx = Reference.widen(x);
        List<Tensor> keep = new java.util.ArrayList<>();
        try (Tensor cx = cpu.fromFloats(mapped, n, c); Tensor crows = cpu.fromInts(rows, n); Tensor cw = cpu.fromFloats(w, n);
             Tensor cout = cpu.fromFloats(prior, t, c); Tensor cunw = cpu.fromFloats(prior, t, c);
             Tensor cs = cpu.allocate(DType.F32, n, c)) {
            Tensor grows = offsetInts(keep, rows, n);
            Tensor gathered = offsetFloats(keep, uniform(126, n * c, 5, 6), n, c);
            be.gatherRows(gathered, offsetFloats(keep, x, t, c), grows);
            close("gatherRows T=" + t, Reference.gatherRows(wx, c, rows), gathered.toFloatArray(), 0);
            Tensor gx = offsetFloats(keep, mapped, n, c);
            Tensor out = offsetFloats(keep, prior, t, c);
            be.scatterAddRows(out, gx, grows, offsetFloats(keep, w, n));
            cb.scatterAddRows(cout, cx, crows, cw);
            assertArrayEquals(cout.toFloatArray(), out.toFloatArray(), "weighted scatter: the CPU's bits T=" + t);
            close("scatterAddRows T=" + t, plus(Reference.scatterAddRows(Reference.widen(mapped), c, rows, Reference.widen(w), t),
                    prior), out.toFloatArray(), 1e-5);
            Tensor unweighted = offsetFloats(keep, prior, t, c);
            be.scatterAddRows(unweighted, gx, grows, null);
            cb.scatterAddRows(cunw, cx, crows, null);
            assertArrayEquals(cunw.toFloatArray(), unweighted.toFloatArray(), "unweighted scatter: the CPU's bits T=" + t);
            Tensor scaled = offsetFloats(keep, new float[n * c], n, c);
            be.scaleRows(scaled, gx, offsetFloats(keep, w, n));
            cb.scaleRows(cs, cx, cw);
            assertArrayEquals(cs.toFloatArray(), scaled.toFloatArray(), "scaleRows: the CPU's bits T=" + t);
            be.scaleRows(gx, gx, offsetFloats(keep, w, n));
            assertArrayEquals(cs.toFloatArray(), gx.toFloatArray(), "scaleRows in place T=" + t);
        } finally {
            closeAll(keep);
        }
    }

    @Test
    void gatherAndScatterNameTheBadRow() {
        try (Tensor x = dev.allocate(DType.F32, 3, 2); Tensor out = dev.allocate(DType.F32, 2, 2);
             Tensor rows = dev.fromInts(new int[] {-1, 3}, 2)) {
            IllegalArgumentException ex = assertThrows(IllegalArgumentException.class, () -> be.gatherRows(out, x, rows));
            assertTrue(ex.getMessage().contains("rows[1] = 3"), ex.getMessage());
            ex = assertThrows(IllegalArgumentException.class, () -> be.scatterAddRows(x, out, rows, null));
            assertTrue(ex.getMessage().contains("rows[1] = 3"), ex.getMessage());
        }
    }

    @Test
    void uniformNoiseIsBitIdenticalToNoiseUniform() {
        int n = 97 * 1025;
        long[] seeds = {0, 1, -1, Long.MIN_VALUE, Long.MAX_VALUE, 0x9E3779B97F4A7C15L};
        // The last ranges round values up to hi, which must become nextDown(hi) (below ±0 too).
        float[][] ranges = {{0.99f, 1.01f}, {-1f, 0f}, {-3e38f, 3e38f}, {0.99999994f, 1f}, {-Float.MIN_VALUE, 0f},
            {1e-45f, 3e-45f}};
        try (Tensor out = dev.allocate(DType.F32, n + 5)) {
            for (long seed : seeds) {
                for (float[] r : ranges) {
                    be.uniformNoise(out.view(5, n), r[0], r[1], seed);
                    float[] got = out.toFloatArray();
                    for (int i = 0; i < n; i++) {
                        float want = org.kindling.ops.Noise.uniform(seed, i, r[0], r[1]);
                        if (Float.floatToRawIntBits(got[5 + i]) != Float.floatToRawIntBits(want)) {
                            fail("seed " + seed + " [" + r[0] + ", " + r[1] + "): element " + i + " is " + got[5 + i]
                                    + ", Noise.uniform gives " + want);
                        }
                    }
                }
            }
            assertThrows(IllegalArgumentException.class, () -> be.uniformNoise(out, 1f, 1f, 0));
        }
    }

    @ParameterizedTest(name = "{0}x{1}")
    @MethodSource("rowsCols")
    void rmsNormMatchesReferenceAndAccumulates(int rows, int cols) {
        int n = rows * cols;
        float[] x = uniform(131, n, -3, 5);
        float[] w = uniform(132, cols, 0.5, 1.5);
        float[] dy = uniform(133, n, -1, 1);
        float[] prior = uniform(134, n, -1, 1);
        float[] priorW = uniform(135, cols, -1, 1);
        float eps = 1e-5f;
        double[][] ref = Reference.rmsNorm(Reference.widen(x), Reference.widen(w), rows, cols, eps);
        double[][] g = Reference.rmsNormBackward(Reference.widen(dy), Reference.widen(x), Reference.widen(w), rows, cols, eps);
        float[][] got = new float[4][];
        float[][] fp32 = new float[4][];
        for (Device d : new Device[] {dev, cpu}) {
            Backend k = d.backend();
            try (Tensor tx = d.fromFloats(x, rows, cols); Tensor tw = d.fromFloats(w, cols);
                 Tensor out = d.allocate(DType.F32, rows, cols); Tensor rstd = d.allocate(DType.F32, rows);
                 Tensor tdy = d.fromFloats(dy, rows, cols); Tensor dx = d.fromFloats(prior, rows, cols);
                 Tensor dw = d.fromFloats(priorW, cols)) {
                k.rmsNormForward(out, rstd, tx, tw, eps);
                k.rmsNormBackward(dx, dw, tdy, tx, tw, rstd);
                float[][] r = d == dev ? got : fp32;
                r[0] = out.toFloatArray();
                r[1] = rstd.toFloatArray();
                r[2] = dx.toFloatArray();
                r[3] = dw.toFloatArray();
                if (d == dev) {
                    try (Tensor dx2 = d.fromFloats(prior, rows, cols); Tensor dw2 = d.fromFloats(priorW, cols)) {
                        k.rmsNormBackward(dx2, dw2, tdy, tx, tw, rstd);
                        assertArrayEquals(r[2], dx2.toFloatArray(), "deterministic dx");
                        assertArrayEquals(r[3], dw2.toFloatArray(), "deterministic dweight");
                    }
                    k.rmsNormForward(tx, rstd, tx, tw, eps);
                    assertArrayEquals(r[0], tx.toFloatArray(), "in place gives the same bits");
                }
            }
        }
        String at = " " + rows + "x" + cols;
        oracle("rmsNorm out" + at, ref[0], got[0], fp32[0], 2);
        oracle("rmsNorm rstd" + at, ref[1], got[1], fp32[1], 2);
        oracle("rmsNorm dx" + at, plus(g[0], prior), got[2], fp32[2], 3);
        oracle("rmsNorm dweight" + at, plus(g[1], priorW), got[3], fp32[3], 3);
    }

    @ParameterizedTest
    @EnumSource(UnaryOp.class)
    void unaryBackwardMatchesReferenceAndTheCpuInPlace(UnaryOp op) {
        boolean positive = op == UnaryOp.LOG || op == UnaryOp.SQRT || op == UnaryOp.RECIPROCAL;
        for (int n : SIZES) {
            float[] x = positive ? uniform(141, n, 0.05, 4) : uniform(141, n, -4, 4);
            if (!positive && n > 2) {
                x[1] = 0f;  // ABS and RELU take their subgradient 0 there
            }
            float[] dy = uniform(142, n, -1, 1);
            float[] prior = uniform(143, n, -1, 1);
            try (Tensor tx = dev.fromFloats(x, n); Tensor tdy = dev.fromFloats(dy, n); Tensor dx = dev.fromFloats(prior, n);
                 Tensor cx = cpu.fromFloats(x, n); Tensor cdy = cpu.fromFloats(dy, n); Tensor cdx = cpu.fromFloats(prior, n)) {
                be.unaryBackward(op, dx, tdy, tx);
                cb.unaryBackward(op, cdx, cdy, cx);
                float[] got = dx.toFloatArray();
                oracle(op + " backward n=" + n, plus(Reference.unaryBackward(op, Reference.widen(dy), Reference.widen(x)),
                        prior), got, cdx.toFloatArray(), 2);
                // dx aliasing dy: dy + dy·f′(x), elementwise.
                be.unaryBackward(op, tdy, tdy, tx);
                cb.unaryBackward(op, cdy, cdy, cx);
                oracle(op + " backward in place n=" + n, plus(Reference.unaryBackward(op, Reference.widen(dy),
                        Reference.widen(x)), dy), tdy.toFloatArray(), cdy.toFloatArray(), 2);
            }
        }
    }

    /** A dropless (and a capacity) MoE layer's training forward and backward on cuda against cpu. */
    @ParameterizedTest(name = "capacity factor {0}")
    @ValueSource(doubles = {0, 1.25})
    void moeLayerForwardAndBackwardMatchTheCpu(double capacityFactor) throws Exception {
        int t = 97;
        int c = 59;
        org.kindling.models.channel.MoeSpec spec = new org.kindling.models.channel.MoeSpec(8, 40, 2, capacityFactor, 0.01,
                0.001, 0.01);
        float[] x = uniform(151, t * c, -1, 1);
        float[] dy = uniform(152, t * c, -1, 1);
        float[][][] results = new float[2][][];
        Device[] devices = {cpu, dev};
        for (int i = 0; i < 2; i++) {
            Device d = devices[i];
            org.kindling.models.nn.Params.Builder pb = new org.kindling.models.nn.Params.Builder();
            try (org.kindling.models.nn.StepContext step = new org.kindling.models.nn.StepContext();
                 org.kindling.models.channel.ChannelMixer layer = spec.build(
                         new org.kindling.models.nn.LayerContext(pb, d, "moe", c, 0, 2, 0.3, 5, step));
                 org.kindling.models.nn.Params params = pb.build(d, 5);
                 Tensor tx = d.fromFloats(x, t, c); Tensor y = d.allocate(DType.F32, t, c);
                 Tensor tdy = d.fromFloats(dy, t, c); Tensor dx = d.allocate(DType.F32, t, c)) {
                params.values().copyFrom(uniform(6, params.count(), -0.3, 0.3));
                params.zeroGrad();
                d.backend().fill(dx, 0f);
                step.train(7, 1.0 / t, v -> { });
                layer.forward(y, tx);
                layer.backward(dx, tdy);
                results[i] = new float[][] {y.toFloatArray(), dx.toFloatArray(), params.grads().toFloatArray()};
            }
        }
        String[] names = {"y", "dx", "parameter gradients"};
        for (int j = 0; j < names.length; j++) {
            float[] want = results[0][j];
            float[] got = results[1][j];
            double scale = 0;
            for (float v : want) {
                scale = Math.max(scale, Math.abs(v));
            }
            assertTrue(scale > 0, names[j] + " is all zeros");
            for (int q = 0; q < want.length; q++) {
                // The same routing and ops; only GEMM and row-sum orders differ between the devices.
                if (!(Math.abs(got[q] - want[q]) <= 1e-5 * scale)) {
                    fail("MoE " + names[j] + "[" + q + "] on cuda is " + got[q] + ", on cpu " + want[q]
                            + " (scale " + scale + ")");
                }
            }
        }
    }

    // ---- attention and the bias gradient (attention.cu) ----

    static Stream<Arguments> attentionShapes() {
        Stream.Builder<Arguments> shapes = Stream.builder();
        for (int hs : new int[] {59, 64, 128}) {
            for (int kvHeads : new int[] {1, 2, 4}) {
                for (boolean causal : new boolean[] {false, true}) {
                    shapes.add(Arguments.of(hs, kvHeads, causal));
                }
            }
        }
        return shapes.build();
    }

    /** What one forward and backward on a device gives: out, lse, then dq, dk, dv accumulated onto their priors. */
    private record AttentionRun(float[] out, float[] lse, float[] dq, float[] dk, float[] dv) {
    }

    private static AttentionRun runAttention(Device d, Attention a, int[] cuQ, int[] cuK, float[][] in) {
        int tq = cuQ[cuQ.length - 1];
        int tk = cuK[cuK.length - 1];
        int nh = a.heads();
        int nkv = a.kvHeads();
        int hs = a.headDim();
        Backend b = d.backend();
        try (Tensor q = d.fromFloats(in[0], tq, nh, hs); Tensor k = d.fromFloats(in[1], tk, nkv, hs);
             Tensor v = d.fromFloats(in[2], tk, nkv, hs); Tensor dout = d.fromFloats(in[3], tq, nh, hs);
             Tensor dq = d.fromFloats(in[4], tq, nh, hs); Tensor dk = d.fromFloats(in[5], tk, nkv, hs);
             Tensor dv = d.fromFloats(in[6], tk, nkv, hs); Tensor out = d.allocate(DType.F32, tq, nh, hs);
             Tensor lse = d.allocate(DType.F32, nh, tq); Tensor cq = d.fromInts(cuQ, cuQ.length);
             Tensor ck = d.fromInts(cuK, cuK.length)) {
            Varlen vq = Varlen.of(cq, cuQ);
            Varlen vk = Varlen.of(ck, cuK);
            b.attentionForward(out, lse, q, k, v, vq, vk, a);
            b.attentionBackward(dq, dk, dv, dout, q, k, v, out, lse, vq, vk, a);
            return new AttentionRun(out.toFloatArray(), lse.toFloatArray(), dq.toFloatArray(), dk.toFloatArray(),
                    dv.toFloatArray());
        }
    }

    /**
     * Forward and backward on cuda against the fp64 reference within the project's rule (2× the fp32
     * CPU's error for outputs, 3× for gradients, plus a floor), gradients accumulating onto priors,
     * and a second cuda run bit-identical to the first.
     */
    private static void attentionMatchesReference(String what, Attention a, int[] cuQ, int[] cuK, long seed) {
        int tq = cuQ[cuQ.length - 1];
        int tk = cuK[cuK.length - 1];
        int nq = tq * a.heads() * a.headDim();
        int nk = tk * a.kvHeads() * a.headDim();
        float[][] in = {uniform(seed, nq, -2, 2), uniform(seed + 1, nk, -2, 2), uniform(seed + 2, nk, -1, 1),
            uniform(seed + 3, nq, -1, 1), uniform(seed + 4, nq, -0.5, 0.5), uniform(seed + 5, nk, -0.5, 0.5),
            uniform(seed + 6, nk, -0.5, 0.5)};
        double[][] fwd = Reference.attention(a, Reference.widen(in[0]), Reference.widen(in[1]), Reference.widen(in[2]), cuQ,
                cuK);
        double[][] bwd = Reference.attentionBackward(a, Reference.widen(in[3]), Reference.widen(in[0]),
                Reference.widen(in[1]), Reference.widen(in[2]), cuQ, cuK);
        AttentionRun gpu = runAttention(dev, a, cuQ, cuK, in);
        AttentionRun fp32 = runAttention(cpu, a, cuQ, cuK, in);
        oracle(what + " out", fwd[0], gpu.out(), fp32.out(), 2);
        oracle(what + " lse", fwd[1], gpu.lse(), fp32.lse(), 2);
        oracle(what + " dq", plus(bwd[0], in[4]), gpu.dq(), fp32.dq(), 3);
        oracle(what + " dk", plus(bwd[1], in[5]), gpu.dk(), fp32.dk(), 3);
        oracle(what + " dv", plus(bwd[2], in[6]), gpu.dv(), fp32.dv(), 3);
        AttentionRun again = runAttention(dev, a, cuQ, cuK, in);
        assertArrayEquals(gpu.out(), again.out(), what + " out is deterministic");
        assertArrayEquals(gpu.lse(), again.lse(), what + " lse is deterministic");
        assertArrayEquals(gpu.dq(), again.dq(), what + " dq is deterministic");
        assertArrayEquals(gpu.dk(), again.dk(), what + " dk is deterministic");
        assertArrayEquals(gpu.dv(), again.dv(), what + " dv is deterministic");
    }

    @ParameterizedTest(name = "hs={0} kvHeads={1} causal={2}")
    @MethodSource("attentionShapes")
    void attentionOverPackedSequencesMatchesReference(int hs, int kvHeads, boolean causal) {
        int[] cu = {0, 1, 98, 1123}; // lengths 1, 97, 1025: one row, a partial tile, many tiles and a partial one
        Attention a = Attention.of(4, kvHeads, hs).withCausal(causal);
        attentionMatchesReference("attention hs=" + hs + " kv=" + kvHeads + (causal ? " causal" : ""), a, cu, cu,
                100L * hs + 10L * kvHeads + (causal ? 1 : 0));
    }

    @ParameterizedTest(name = "causal={0}")
    @ValueSource(booleans = {false, true})
    void attentionOfQueryChunksAgainstLongerKeysMatchesReference(boolean causal) {
        // Query chunks shorter than their keys (a KV cache): causal masking aligns the last query with the last key.
        int[] cuQ = {0, 1, 50, 150, 150};
        int[] cuK = {0, 97, 200, 1225, 1290};
        Attention a = Attention.of(4, 2, 64).withCausal(causal).withScale(0.3f);
        attentionMatchesReference("attention chunks" + (causal ? " causal" : ""), a, cuQ, cuK, causal ? 7 : 8);
    }

    @ParameterizedTest(name = "causal={0}")
    @ValueSource(booleans = {false, true})
    void blockSparseAttentionMatchesReferenceAndADenseMaskMatchesNoMask(boolean causal) {
        int[] cu = {0, 97, 1122, 1522};
        BlockMask window = BlockMask.localWindow(1025, 128, 1);
        BlockMask strided = BlockMask.strided(1025, 256, 2, 1);
        Attention a = Attention.of(4, 1, 64).withCausal(causal);
        attentionMatchesReference("local window" + (causal ? " causal" : ""), a.withMask(window), cu, cu, 21);
        attentionMatchesReference("strided" + (causal ? " causal" : ""), a.withMask(strided), cu, cu, 22);
        float[][] in = {uniform(31, 1522 * 4 * 64, -2, 2), uniform(32, 1522 * 64, -2, 2), uniform(33, 1522 * 64, -1, 1),
            uniform(34, 1522 * 4 * 64, -1, 1), new float[1522 * 4 * 64], new float[1522 * 64], new float[1522 * 64]};
        AttentionRun dense = runAttention(dev, a, cu, cu, in);
        AttentionRun masked = runAttention(dev, a.withMask(BlockMask.dense(1025, 128)), cu, cu, in);
        assertArrayEquals(dense.out(), masked.out(), "a dense mask gives the dense kernel's out");
        assertArrayEquals(dense.dq(), masked.dq(), "a dense mask gives the dense kernel's dq");
        assertArrayEquals(dense.dk(), masked.dk(), "a dense mask gives the dense kernel's dk");
    }

    @Test
    void attentionRefusesWideHeadsAndBf16() {
        int[] cu = {0, 3};
        try (Tensor cq = dev.fromInts(cu, 2); Tensor q = dev.allocate(DType.F32, 3, 1, 129);
             Tensor out = dev.allocate(DType.F32, 3, 1, 129); Tensor lse = dev.allocate(DType.F32, 1, 3);
             Tensor qb = dev.allocate(DType.BF16, 3, 1, 64); Tensor outb = dev.allocate(DType.F32, 3, 1, 64)) {
            Varlen vc = Varlen.of(cq, cu);
            IllegalArgumentException wide = assertThrows(IllegalArgumentException.class,
                    () -> be.attentionForward(out, lse, q, q, q, vc, vc, Attention.of(1, 1, 129)));
            assertTrue(wide.getMessage().contains("128"), wide.getMessage());
            IllegalArgumentException bf16 = assertThrows(IllegalArgumentException.class,
                    () -> be.attentionForward(outb, lse, qb, qb, qb, vc, vc, Attention.of(1, 1, 64)));
            assertTrue(bf16.getMessage().contains("F32"), bf16.getMessage());
        }
    }

    @ParameterizedTest(name = "{0}x{1}")
    @MethodSource("rowsCols")
    void addColumnSumsAccumulatesInRowOrderWithinAnUlpOfTheReference(int rows, int cols) {
        float[] x = uniform(81, rows * cols, -3, 3);
        float[] prior = uniform(82, cols, -1, 1);
        double[] sums = Reference.columnSums(Reference.widen(x), rows, cols);
        try (Tensor tx = dev.fromFloats(x, rows, cols); Tensor out = dev.fromFloats(prior, cols);
             Tensor again = dev.fromFloats(prior, cols); Tensor cx = cpu.fromFloats(x, rows, cols);
             Tensor cout = cpu.fromFloats(prior, cols)) {
            be.addColumnSums(out, tx);
            be.addColumnSums(again, tx);
            cb.addColumnSums(cout, cx);
            float[] got = out.toFloatArray();
            assertArrayEquals(got, again.toFloatArray(), "addColumnSums is deterministic");
            double[] want = plus(sums, prior);
            oracle("addColumnSums " + rows + "x" + cols, want, got, cout.toFloatArray(), 2);
            for (int c = 0; c < cols; c++) {
                // The sum rounded once to float, then added to the prior: within 1.5 ulps of the larger.
                double tol = 2 * Math.ulp((float) Math.max(Math.abs(sums[c]), Math.abs(prior[c])));
                if (!(Math.abs(got[c] - want[c]) <= tol)) {
                    fail("addColumnSums column " + c + " is " + got[c] + ", expected " + want[c] + " (tolerance " + tol + ")");
                }
            }
        }
    }

    // ---- causal long convolution and linear attention (ssm.cu) ----

    private static final String[] SSM_OPS = {"causalConvForward", "causalConvBackward", "linearAttentionForward",
        "linearAttentionBackward", "linearAttentionStep", "ssmConvForward", "ssmConvBackward", "ssmStep", "favorFeatures",
        "favorFeaturesBackward"};
    /** Lengths 1, 97 and 1025: one token, a partial chunk, many chunks and a partial one. */
    private static final int[] PACKED = {0, 1, 98, 1123};

    @Test
    void noSsmKernelFallsBackToTheHost() {
        for (String op : SSM_OPS) {
            assertFalse(HostFallback.fallsBack(be, op), op + " falls back to the host");
        }
    }

    /** y, then du and dk accumulated onto their priors, from one forward and backward on a device. */
    private static float[][] runCausalConv(Device d, int channels, int taps, float[][] in) {
        int t = PACKED[PACKED.length - 1];
        Backend b = d.backend();
        try (Tensor u = d.fromFloats(in[0], t, channels); Tensor k = d.fromFloats(in[1], taps, channels);
             Tensor dy = d.fromFloats(in[2], t, channels); Tensor du = d.fromFloats(in[3], t, channels);
             Tensor dk = d.fromFloats(in[4], taps, channels); Tensor y = d.allocate(DType.F32, t, channels);
             Tensor cu = d.fromInts(PACKED, PACKED.length)) {
            Varlen v = Varlen.of(cu, PACKED);
            b.causalConvForward(y, u, k, v);
            b.causalConvBackward(du, dk, dy, u, k, v);
            return new float[][] {y.toFloatArray(), du.toFloatArray(), dk.toFloatArray()};
        }
    }

    @ParameterizedTest(name = "taps={0}")
    @ValueSource(ints = {1, 4, 97, 1300})
    void causalConvMatchesReferenceAndIsDeterministic(int taps) {
        int channels = 59;
        int t = PACKED[PACKED.length - 1];
        float[][] in = {uniform(90 + taps, t * channels, -1, 1), uniform(91 + taps, taps * channels, -1, 1),
            uniform(92 + taps, t * channels, -1, 1), uniform(93 + taps, t * channels, -0.5, 0.5),
            uniform(94 + taps, taps * channels, -0.5, 0.5)};
        double[] y = Reference.causalConv(Reference.widen(in[0]), Reference.widen(in[1]), PACKED, channels);
        double[][] g = Reference.causalConvBackward(Reference.widen(in[2]), Reference.widen(in[0]), Reference.widen(in[1]),
                PACKED, channels);
        float[][] gpu = runCausalConv(dev, channels, taps, in);
        float[][] fp32 = runCausalConv(cpu, channels, taps, in);
        String at = " taps=" + taps;
        oracle("causal conv y" + at, y, gpu[0], fp32[0], 2);
        oracle("causal conv du" + at, plus(g[0], in[3]), gpu[1], fp32[1], 3);
        oracle("causal conv dk" + at, plus(g[1], in[4]), gpu[2], fp32[2], 3);
        float[][] again = runCausalConv(dev, channels, taps, in);
        for (int i = 0; i < gpu.length; i++) {
            assertArrayEquals(gpu[i], again[i], "causal conv output " + i + at + " is deterministic");
        }
    }

    /** out, then dq, dk, dv accumulated onto their priors, from one forward and backward on a device. */
    private static float[][] runLinearAttention(Device d, int heads, int f, int hd, float eps, float[][] in) {
        int t = PACKED[PACKED.length - 1];
        Backend b = d.backend();
        try (Tensor q = d.fromFloats(in[0], t, heads * f); Tensor k = d.fromFloats(in[1], t, heads * f);
             Tensor v = d.fromFloats(in[2], t, heads * hd); Tensor dout = d.fromFloats(in[3], t, heads * hd);
             Tensor dq = d.fromFloats(in[4], t, heads * f); Tensor dk = d.fromFloats(in[5], t, heads * f);
             Tensor dv = d.fromFloats(in[6], t, heads * hd); Tensor out = d.allocate(DType.F32, t, heads * hd);
             Tensor cu = d.fromInts(PACKED, PACKED.length)) {
            Varlen vc = Varlen.of(cu, PACKED);
            b.linearAttentionForward(out, q, k, v, vc, heads, eps);
            b.linearAttentionBackward(dq, dk, dv, dout, q, k, v, vc, heads, eps);
            return new float[][] {out.toFloatArray(), dq.toFloatArray(), dk.toFloatArray(), dv.toFloatArray()};
        }
    }

    @ParameterizedTest(name = "F={0} D={1}")
    @MethodSource("linearAttentionDims")
    void linearAttentionMatchesReferenceAndIsDeterministic(int f, int hd) {
        int heads = 3;
        int t = PACKED[PACKED.length - 1];
        float eps = 1e-3f;
        int nq = t * heads * f;
        int nv = t * heads * hd;
        long seed = 100L * f + hd;
        float[][] in = {uniform(seed, nq, 0, 1), uniform(seed + 1, nq, 0, 1), uniform(seed + 2, nv, -1, 1),
            uniform(seed + 3, nv, -1, 1), uniform(seed + 4, nq, -0.5, 0.5), uniform(seed + 5, nq, -0.5, 0.5),
            uniform(seed + 6, nv, -0.5, 0.5)};
        LinearAttention l = new LinearAttention(PACKED, t, heads, f, hd);
        double[] q = Reference.widen(in[0]);
        double[] k = Reference.widen(in[1]);
        double[] v = Reference.widen(in[2]);
        double[] out = Reference.linearAttention(l, q, k, v, eps);
        double[][] g = Reference.linearAttentionBackward(l, Reference.widen(in[3]), q, k, v, eps);
        float[][] gpu = runLinearAttention(dev, heads, f, hd, eps, in);
        float[][] fp32 = runLinearAttention(cpu, heads, f, hd, eps, in);
        String at = " F=" + f + " D=" + hd;
        oracle("linear attention out" + at, out, gpu[0], fp32[0], 2);
        oracle("linear attention dq" + at, plus(g[0], in[4]), gpu[1], fp32[1], 3);
        oracle("linear attention dk" + at, plus(g[1], in[5]), gpu[2], fp32[2], 3);
        oracle("linear attention dv" + at, plus(g[2], in[6]), gpu[3], fp32[3], 3);
        float[][] again = runLinearAttention(dev, heads, f, hd, eps, in);
        for (int i = 0; i < gpu.length; i++) {
            assertArrayEquals(gpu[i], again[i], "linear attention output " + i + at + " is deterministic");
        }
    }

    static Stream<Arguments> linearAttentionDims() {
        return Stream.of(Arguments.of(1, 1), Arguments.of(59, 33), Arguments.of(64, 64), Arguments.of(128, 128));
    }

    @Test
    void linearAttentionStepsContinueTheStateAndMatchReference() {
        int heads = 2;
        int f = 59;
        int hd = 37;
        float eps = 1e-3f;
        int[] split = {40, 57};
        int t = split[0] + split[1];
        float[] q = uniform(61, t * heads * f, 0, 1);
        float[] k = uniform(62, t * heads * f, 0, 1);
        float[] v = uniform(63, t * heads * hd, -1, 1);
        double[][] want = Reference.linearAttentionStep(new LinearAttention(new int[] {0, t}, t, heads, f, hd),
                new double[heads * f * hd], new double[heads * f], Reference.widen(q), Reference.widen(k), Reference.widen(v),
                eps);
        float[][] gpu = runSteps(dev, heads, f, hd, eps, split, q, k, v);
        float[][] fp32 = runSteps(cpu, heads, f, hd, eps, split, q, k, v);
        oracle("linear attention step out", want[0], gpu[0], fp32[0], 2);
        oracle("linear attention step state", want[1], gpu[1], fp32[1], 2);
        oracle("linear attention step norm", want[2], gpu[2], fp32[2], 2);
        float[][] again = runSteps(dev, heads, f, hd, eps, split, q, k, v);
        for (int i = 0; i < gpu.length; i++) {
            assertArrayEquals(gpu[i], again[i], "linear attention step output " + i + " is deterministic");
        }
    }

    /** out of every token, then the final state and norm, stepping the tokens in calls of {@code split} tokens. */
    private static float[][] runSteps(Device d, int heads, int f, int hd, float eps, int[] split, float[] q, float[] k,
                                      float[] v) {
        int t = q.length / (heads * f);
        Backend b = d.backend();
        try (Tensor tq = d.fromFloats(q, t, heads * f); Tensor tk = d.fromFloats(k, t, heads * f);
             Tensor tv = d.fromFloats(v, t, heads * hd); Tensor out = d.allocate(DType.F32, t, heads * hd);
             Tensor state = d.allocate(DType.F32, heads, f, hd); Tensor norm = d.allocate(DType.F32, heads, f)) {
            int r0 = 0;
            for (int n : split) {
                b.linearAttentionStep(out.view(r0 * heads * hd, n, heads * hd), state, norm, tq.view(r0 * heads * f, n,
                        heads * f), tk.view(r0 * heads * f, n, heads * f), tv.view(r0 * heads * hd, n, heads * hd), heads, eps);
                r0 += n;
            }
            return new float[][] {out.toFloatArray(), state.toFloatArray(), norm.toFloatArray()};
        }
    }

    @Test
    void linearAttentionNamesTheNegativeFeatureAndRefusesWideStates() {
        int[] cu = {0, 3};
        float[] q = new float[3 * 4];
        q[2 * 4 + 1] = -0.5f;
        try (Tensor cq = dev.fromInts(cu, 2); Tensor tq = dev.fromFloats(q, 3, 4); Tensor k = dev.allocate(DType.F32, 3, 4);
             Tensor v = dev.allocate(DType.F32, 3, 2); Tensor out = dev.allocate(DType.F32, 3, 2);
             Tensor wide = dev.allocate(DType.F32, 3, 129); Tensor wout = dev.allocate(DType.F32, 3, 2)) {
            Varlen vc = Varlen.of(cq, cu);
            IllegalArgumentException neg = assertThrows(IllegalArgumentException.class,
                    () -> be.linearAttentionForward(out, tq, k, v, vc, 1, 1e-3f));
            assertTrue(neg.getMessage().contains("q[2, 1] = -0.5"), neg.getMessage());
            IllegalArgumentException w = assertThrows(IllegalArgumentException.class,
                    () -> be.linearAttentionForward(wout, wide, wide, v, vc, 1, 1e-3f));
            assertTrue(w.getMessage().contains("128"), w.getMessage());
        }
    }

    /**
     * S4D-Lin-like parameters of C channels and N modes: {logDt [C] with dt in [0.001, 0.1], aRe, aIm
     * [C, N] with A = −exp(aRe) + i·aIm and aIm ≈ π·n, c [C, N, 2]}.
     */
    private static float[][] ssmParams(long seed, int channels, int modes) {
        float[] logDt = uniform(seed, channels, Math.log(0.001), Math.log(0.1));
        float[] aRe = uniform(seed + 1, channels * modes, Math.log(0.3), Math.log(0.7));
        float[] aIm = uniform(seed + 2, channels * modes, -0.5, 0.5);
        for (int i = 0; i < aIm.length; i++) {
            aIm[i] += (float) (Math.PI * (i % modes));
        }
        return new float[][] {logDt, aRe, aIm, uniform(seed + 3, channels * modes * 2, -1, 1)};
    }

    /** y, then du, dlogDt, daRe, daIm, dc accumulated onto their priors (in[2..6]), for u = in[0] and dy = in[1]. */
    private static float[][] runSsm(Device d, int channels, int modes, float[][] p, float[][] in) {
        int t = PACKED[PACKED.length - 1];
        Backend b = d.backend();
        try (Tensor u = d.fromFloats(in[0], t, channels); Tensor dy = d.fromFloats(in[1], t, channels);
             Tensor du = d.fromFloats(in[2], t, channels); Tensor dlogDt = d.fromFloats(in[3], channels);
             Tensor daRe = d.fromFloats(in[4], channels, modes); Tensor daIm = d.fromFloats(in[5], channels, modes);
             Tensor dc = d.fromFloats(in[6], channels, modes, 2); Tensor logDt = d.fromFloats(p[0], channels);
             Tensor aRe = d.fromFloats(p[1], channels, modes); Tensor aIm = d.fromFloats(p[2], channels, modes);
             Tensor c = d.fromFloats(p[3], channels, modes, 2); Tensor y = d.allocate(DType.F32, t, channels);
             Tensor cu = d.fromInts(PACKED, PACKED.length)) {
            Varlen v = Varlen.of(cu, PACKED);
            b.ssmConvForward(y, u, logDt, aRe, aIm, c, v, 64);
            b.ssmConvBackward(du, dlogDt, daRe, daIm, dc, dy, u, logDt, aRe, aIm, c, v, 64);
            return new float[][] {y.toFloatArray(), du.toFloatArray(), dlogDt.toFloatArray(), daRe.toFloatArray(),
                daIm.toFloatArray(), dc.toFloatArray()};
        }
    }

    @ParameterizedTest(name = "modes={0}")
    @ValueSource(ints = {1, 8})
    void ssmConvMatchesReferenceAndIsDeterministic(int modes) {
        int channels = 59;
        int t = PACKED[PACKED.length - 1];
        float[][] p = ssmParams(70 + modes, channels, modes);
        float[][] in = {uniform(75, t * channels, -1, 1), uniform(76, t * channels, -1, 1),
            uniform(77, t * channels, -0.5, 0.5), uniform(78, channels, -0.5, 0.5), uniform(79, channels * modes, -0.5, 0.5),
            uniform(80, channels * modes, -0.5, 0.5), uniform(81, channels * modes * 2, -0.5, 0.5)};
        double[] y = Reference.ssmConv(Reference.widen(in[0]), Reference.widen(p[0]), Reference.widen(p[1]),
                Reference.widen(p[2]), Reference.widen(p[3]), PACKED, channels);
        double[][] g = Reference.ssmConvBackward(Reference.widen(in[1]), Reference.widen(in[0]), Reference.widen(p[0]),
                Reference.widen(p[1]), Reference.widen(p[2]), Reference.widen(p[3]), PACKED, channels);
        float[][] gpu = runSsm(dev, channels, modes, p, in);
        float[][] fp32 = runSsm(cpu, channels, modes, p, in);
        String at = " modes=" + modes;
        oracle("ssm y" + at, y, gpu[0], fp32[0], 2);
        String[] names = {"du", "dlogDt", "daRe", "daIm", "dc"};
        for (int i = 0; i < names.length; i++) {
            oracle("ssm " + names[i] + at, plus(g[i], in[2 + i]), gpu[1 + i], fp32[1 + i], 3);
        }
        float[][] again = runSsm(dev, channels, modes, p, in);
        for (int i = 0; i < gpu.length; i++) {
            assertArrayEquals(gpu[i], again[i], "ssm output " + i + at + " is deterministic");
        }
    }

    @Test
    void ssmStepsContinueTheStateAndMatchReference() {
        int channels = 59;
        int modes = 8;
        int[] split = {40, 57};
        int t = split[0] + split[1];
        float[][] p = ssmParams(85, channels, modes);
        float[] u = uniform(86, t * channels, -1, 1);
        double[][] want = Reference.ssmStep(new double[channels * modes * 2], Reference.widen(u), Reference.widen(p[0]),
                Reference.widen(p[1]), Reference.widen(p[2]), Reference.widen(p[3]), channels);
        float[][] gpu = runSsmSteps(dev, channels, modes, p, u, split);
        float[][] fp32 = runSsmSteps(cpu, channels, modes, p, u, split);
        oracle("ssm step y", want[0], gpu[0], fp32[0], 2);
        oracle("ssm step state", want[1], gpu[1], fp32[1], 2);
        float[][] again = runSsmSteps(dev, channels, modes, p, u, split);
        assertArrayEquals(gpu[0], again[0], "ssm step y is deterministic");
        assertArrayEquals(gpu[1], again[1], "ssm step state is deterministic");
    }

    /** y of every token, then the final state, stepping the tokens in calls of {@code split} tokens from a zeroed state. */
    private static float[][] runSsmSteps(Device d, int channels, int modes, float[][] p, float[] u, int[] split) {
        int t = u.length / channels;
        Backend b = d.backend();
        try (Tensor tu = d.fromFloats(u, t, channels); Tensor y = d.allocate(DType.F32, t, channels);
             Tensor state = d.allocate(DType.F32, channels, modes, 2); Tensor logDt = d.fromFloats(p[0], channels);
             Tensor aRe = d.fromFloats(p[1], channels, modes); Tensor aIm = d.fromFloats(p[2], channels, modes);
             Tensor c = d.fromFloats(p[3], channels, modes, 2)) {
            int r0 = 0;
            for (int n : split) {
                b.ssmStep(y.view(r0 * channels, n, channels), state, tu.view(r0 * channels, n, channels), logDt, aRe, aIm, c);
                r0 += n;
            }
            return new float[][] {y.toFloatArray(), state.toFloatArray()};
        }
    }

    /** out, then dx accumulated onto its prior in[2], for x = in[0] and dout = in[1]. */
    private static float[][] runFavor(Device d, FavorFeatures f, float[] w, boolean query, float[][] in) {
        int t = f.tokens();
        int nh = f.heads();
        Backend b = d.backend();
        try (Tensor x = d.fromFloats(in[0], t, nh * f.headDim()); Tensor tw = d.fromFloats(w, f.features(), f.headDim());
             Tensor dout = d.fromFloats(in[1], t, nh * f.features()); Tensor dx = d.fromFloats(in[2], t, nh * f.headDim());
             Tensor out = d.allocate(DType.F32, t, nh * f.features())) {
            b.favorFeatures(out, x, tw, nh, query);
            b.favorFeaturesBackward(dx, dout, out, x, tw, nh, query);
            return new float[][] {out.toFloatArray(), dx.toFloatArray()};
        }
    }

    @ParameterizedTest(name = "T={0} query={1}")
    @MethodSource("favorShapes")
    void favorFeaturesMatchReferenceAndAreDeterministic(int t, boolean query) {
        FavorFeatures f = new FavorFeatures(t, 3, 59, 97);
        int nx = t * f.heads() * f.headDim();
        int no = t * f.heads() * f.features();
        float[] w = uniform(50 + t, f.features() * f.headDim(), -1, 1);
        float[][] in = {uniform(51 + t, nx, -0.4, 0.4), uniform(52 + t, no, -1, 1), uniform(53 + t, nx, -0.5, 0.5)};
        double[] out = Reference.favorFeatures(f, Reference.widen(in[0]), Reference.widen(w), query);
        double[] dx = Reference.favorFeaturesBackward(f, Reference.widen(in[1]), Reference.widen(in[0]), Reference.widen(w),
                query);
        float[][] gpu = runFavor(dev, f, w, query, in);
        float[][] fp32 = runFavor(cpu, f, w, query, in);
        String at = " T=" + t + (query ? " query" : " key");
        oracle("favor out" + at, out, gpu[0], fp32[0], 2);
        oracle("favor dx" + at, plus(dx, in[2]), gpu[1], fp32[1], 3);
        float[][] again = runFavor(dev, f, w, query, in);
        assertArrayEquals(gpu[0], again[0], "favor out" + at + " is deterministic");
        assertArrayEquals(gpu[1], again[1], "favor dx" + at + " is deterministic");
    }

    static Stream<Arguments> favorShapes() {
        Stream.Builder<Arguments> b = Stream.builder();
        for (int t : new int[] {1, 97, 1025}) {
            for (boolean query : new boolean[] {false, true}) {
                b.add(Arguments.of(t, query));
            }
        }
        return b.build();
    }
}
