package org.kindling.ops.cuda;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.time.Duration;
import java.util.Optional;
import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;
import org.kindling.models.Gpt;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.Synthetic;
import org.kindling.models.train.StepResult;
import org.kindling.models.train.Trainer;
import org.kindling.ops.BF16;
import org.kindling.ops.Backend;
import org.kindling.ops.BinaryOp;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Fence;
import org.kindling.ops.HostFallback;
import org.kindling.ops.ReduceOp;
import org.kindling.ops.Reference;
import org.kindling.ops.Tensor;
import org.kindling.ops.UnaryOp;

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

    private static Optional<String> unavailable;

    @BeforeAll
    static void open() {
        unavailable = Device.provider("cuda").unavailable();
        if (unavailable.isEmpty()) {
            dev = Device.open("cuda");
            be = dev.backend();
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
        assertTrue(HostFallback.fallsBack(be, "gemm"), "gemm has no kernel yet; update this test when it does");
        assertFalse(HostFallback.fallsBack(be, "binary"));
        ModelConfig model = ModelConfig.gpt(20, 32, 2, 4, 2, 64, 4, 0, 0.02, 1e-5);
        TrainConfig train = new TrainConfig(7, 3e-3, 3e-4, 1, 10, 0.1, 0.9, 0.95, 1e-8, 1.0, 1, 512, 5, 0, 2);
        StepResult[][] steps = new StepResult[2][2];
        String[] specs = {"cpu:2", "cuda"};
        for (int i = 0; i < 2; i++) {
            DataSource data = Synthetic.source(Synthetic.associativeRecall(20, 32, 64, 5), 4);
            try (Device d = Device.open(specs[i]); Gpt m = new Gpt(model, d, 7); Trainer t = new Trainer(m, train)) {
                steps[i][0] = t.step(data);
                steps[i][1] = t.step(data);
            }
        }
        assertEquals(steps[0][0].loss(), steps[1][0].loss(), 1e-5 * Math.abs(steps[0][0].loss()), "first loss");
        assertEquals(steps[0][0].gradNorm(), steps[1][0].gradNorm(), 1e-4 * steps[0][0].gradNorm(), "first gradient norm");
        assertEquals(steps[0][1].loss(), steps[1][1].loss(), 1e-3 * Math.abs(steps[0][1].loss()), "second loss");
    }
}
