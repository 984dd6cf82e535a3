package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.kindling.ops.AttentionTest.gaussian;
import static org.kindling.ops.Reference.widen;

import java.util.stream.Stream;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;
import org.junit.jupiter.params.provider.ValueSource;
import org.kindling.ops.cpu.CpuDevice;
import org.kindling.ops.reference.ReferenceDevice;

/**
 * Performer's FAVOR+ features ({@link Backend#favorFeatures}): the reference device against the
 * fp64 {@link Reference} (features within 1e-6 relative, the accumulated dx within 1e-5 of the
 * largest |dx| — it sums M terms that partly cancel), the CPU kernel within 2× (features) / 3×
 * (dx) a naive fp32 loop's error against it, the reference backward against
 * finite differences (stabiliser included), φ(q)·φ(k) as an unbiased estimate of exp(q·k), the
 * query stabiliser as a per-row-and-head factor, bounded keys, and bit-identical results across
 * runs.
 */
class FavorFeaturesTest {
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

    /** Gaussian x scaled by D^(−1/4), as the layer passes it. */
    static float[] x(long seed, int n, int d) {
        float[] x = gaussian(seed, n);
        float s = (float) Math.pow(d, -0.25);
        for (int i = 0; i < n; i++) {
            x[i] *= s;
        }
        return x;
    }

    record Run(float[] out, float[] dx) {
    }

    static Run run(Device d, float[] x, float[] w, float[] dout, float[] dx0, FavorFeatures f, boolean query) {
        int rows = f.tokens();
        Backend be = d.backend();
        try (Tensor tx = d.fromFloats(x, rows, f.heads() * f.headDim());
             Tensor tw = d.fromFloats(w, f.features(), f.headDim());
             Tensor out = d.allocate(DType.F32, rows, f.heads() * f.features());
             Tensor g = d.fromFloats(dout, rows, f.heads() * f.features());
             Tensor dx = d.fromFloats(dx0, rows, f.heads() * f.headDim())) {
            be.favorFeatures(out, tx, tw, f.heads(), query);
            be.favorFeaturesBackward(dx, g, out, tx, tw, f.heads(), query);
            return new Run(out.toFloatArray(), dx.toFloatArray());
        }
    }

    /** FAVOR+ and its backward as plain fp32 loops: the same-precision baseline of the oracle rule. */
    static Run naive(float[] x, float[] w, float[] dout, float[] dx0, FavorFeatures f, boolean query) {
        int rows = f.tokens() * f.heads();
        int d = f.headDim();
        int m = f.features();
        float[] out = new float[rows * m];
        float[] dx = dx0.clone();
        float scale = (float) (1 / Math.sqrt(m));
        for (int r = 0; r < rows; r++) {
            float[] logit = new float[m];
            int star = 0;
            for (int i = 0; i < m; i++) {
                for (int j = 0; j < d; j++) {
                    logit[i] += w[i * d + j] * x[r * d + j];
                }
                star = logit[i] > logit[star] ? i : star;
            }
            float norm = 0;
            for (int j = 0; j < d; j++) {
                norm += x[r * d + j] * x[r * d + j];
            }
            float shift = norm / 2 + (query ? logit[star] : 0f);
            float total = 0;
            for (int i = 0; i < m; i++) {
                out[r * m + i] = (float) Math.exp(logit[i] - shift) * scale;
                float g = dout[r * m + i] * out[r * m + i];
                total += g;
                for (int j = 0; j < d; j++) {
                    dx[r * d + j] += g * w[i * d + j];
                }
            }
            for (int j = 0; j < d; j++) {
                dx[r * d + j] -= total * (x[r * d + j] + (query ? w[star * d + j] : 0f));
            }
        }
        return new Run(out, dx);
    }

    static Stream<Arguments> shapes() {
        return Stream.of(Arguments.of(1, 1, 1, 1), Arguments.of(7, 3, 16, 32), Arguments.of(97, 2, 64, 59),
                Arguments.of(1025, 1, 7, 97));
    }

    @ParameterizedTest(name = "T={0} NH={1} D={2} M={3}")
    @MethodSource("shapes")
    void devicesMatchReference(int t, int nh, int d, int m) {
        FavorFeatures f = new FavorFeatures(t, nh, d, m);
        float[] x = x(t * 31L + m, t * nh * d, d);
        float[] w = gaussian(t + 5L, m * d);
        float[] dout = gaussian(t + 6L, t * nh * m);
        float[] dx0 = gaussian(t + 7L, x.length);
        for (boolean query : new boolean[] {true, false}) {
            double[] out = Reference.favorFeatures(f, widen(x), widen(w), query);
            double[] dx = Check.plus(Reference.favorFeaturesBackward(f, widen(dout), widen(x), widen(w), query), dx0);
            double dxScale = AttentionTest.maxAbs(dx);
            Run fp64 = run(ref, x, w, dout, dx0, f, query);
            String kind = query ? " query" : " key";
            Check.close("reference" + kind + " features", out, fp64.out(), 0, 1e-6);
            Check.close("reference" + kind + " dx", dx, fp64.dx(), 1e-5 * dxScale, 1e-5);
            // The CPU kernel takes its logits from an fp32 GEMM: held to 2× (features) / 3× (dx) a naive fp32 loop's error.
            Run fused = run(cpu, x, w, dout, dx0, f, query);
            Run naive = naive(x, w, dout, dx0, f, query);
            AttentionTest.assertOracle("cpu" + kind + " features", out, fused.out(), naive.out(), 2);
            AttentionTest.assertOracle("cpu" + kind + " dx", dx, fused.dx(), naive.dx(), 3);
        }
    }

    @ParameterizedTest
    @ValueSource(booleans = {true, false})
    void referenceBackwardMatchesFiniteDifferences(boolean query) {
        FavorFeatures f = new FavorFeatures(3, 2, 4, 5);
        double[] x = ReferenceGradientTest.data(21, 3 * 2 * 4);
        double[] w = widen(gaussian(22, 5 * 4));
        double[] dout = ReferenceGradientTest.data(23, 3 * 2 * 5);
        ReferenceGradientTest.assertGradient("favor dx " + (query ? "query" : "key"),
                ReferenceGradientTest.numeric(v -> Reference.favorFeatures(f, v, w, query), x, dout),
                Reference.favorFeaturesBackward(f, dout, x, w, query));
    }

    /**
     * E_w[φ(q)·φ(k)] = exp(q·k) for w ~ N(0, I): the mean over 20,000 independent draws of w lies
     * within 4 standard errors, and those are small enough (2 % of the target) to catch a bias.
     */
    @Test
    void keyFeaturesEstimateTheSoftmaxKernelUnbiased() {
        int d = 8;
        int m = 16;
        int draws = 20000;
        FavorFeatures f = new FavorFeatures(1, 1, d, m);
        // |q|, |k| ≈ 0.85: the estimator's variance grows like exp(|q + k|²), so moderate norms keep the test sharp.
        double[] q = widen(x(31, d, d));
        double[] k = widen(x(32, d, d));
        for (int j = 0; j < d; j++) {
            q[j] *= 0.5;
            k[j] *= 0.5;
        }
        double target = 0;
        for (int j = 0; j < d; j++) {
            target += q[j] * k[j];
        }
        target = Math.exp(target);
        double sum = 0;
        double sumSq = 0;
        for (int r = 0; r < draws; r++) {
            double[] w = widen(gaussian(1000 + r, m * d));
            double[] pq = Reference.favorFeatures(f, q, w, false);
            double[] pk = Reference.favorFeatures(f, k, w, false);
            double e = 0;
            for (int i = 0; i < m; i++) {
                e += pq[i] * pk[i];
            }
            sum += e;
            sumSq += e * e;
        }
        double mean = sum / draws;
        double se = Math.sqrt((sumSq / draws - mean * mean) / (draws - 1));
        assertTrue(se < 0.02 * target, "standard error " + se + " of " + target);
        assertTrue(Math.abs(mean - target) <= 4 * se, "mean " + mean + " vs exp(q·k) " + target + " (se " + se + ")");
    }

    /**
     * A query's features are its key features times e^(−s) for one s per row and head, and the
     * largest is e^(−|x|²/2)/√M: the stabiliser cancels in linear attention's ratio.
     */
    @Test
    void queryStabiliserIsOneFactorPerRowAndHead() {
        FavorFeatures f = new FavorFeatures(5, 3, 8, 16);
        double[] x = widen(x(41, 5 * 3 * 8, 8));
        for (int i = 0; i < x.length; i++) {
            x[i] *= 4; // large logits, where the stabiliser matters
        }
        double[] w = widen(gaussian(42, 16 * 8));
        float[] xf = new float[x.length];
        for (int i = 0; i < x.length; i++) {
            xf[i] = (float) x[i];
        }
        Run qr = run(cpu, xf, toFloat(w), new float[5 * 3 * 16], new float[x.length], f, true);
        Run kr = run(cpu, xf, toFloat(w), new float[5 * 3 * 16], new float[x.length], f, false);
        for (int r = 0; r < 15; r++) {
            double ratio = (double) qr.out()[r * 16] / kr.out()[r * 16];
            double top = 0;
            for (int i = 0; i < 16; i++) {
                assertEquals(ratio, (double) qr.out()[r * 16 + i] / kr.out()[r * 16 + i], 1e-5 * ratio, "row-head " + r);
                top = Math.max(top, qr.out()[r * 16 + i]);
            }
            double norm = 0;
            for (int j = 0; j < 8; j++) {
                norm += xf[r * 8 + j] * (double) xf[r * 8 + j];
            }
            assertEquals(Math.exp(-norm / 2) / 4, top, 1e-6 * top, "largest query feature of row-head " + r);
        }
    }

    private static float[] toFloat(double[] v) {
        float[] f = new float[v.length];
        for (int i = 0; i < v.length; i++) {
            f[i] = (float) v[i];
        }
        return f;
    }

    /** Keys have no stabiliser, yet exp(w·x − |x|²/2) ≤ exp(|w|²/2) keeps them finite for huge x. */
    @Test
    void keyFeaturesAreBoundedByTheRandomFeatures() {
        FavorFeatures f = new FavorFeatures(4, 1, 6, 9);
        float[] x = gaussian(51, 4 * 6);
        for (int i = 0; i < x.length; i++) {
            x[i] *= 100;
        }
        x[3] = 0;
        float[] w = gaussian(52, 9 * 6);
        Run r = run(cpu, x, w, new float[4 * 9], new float[x.length], f, false);
        for (int t = 0; t < 4; t++) {
            for (int i = 0; i < 9; i++) {
                double wn = 0;
                for (int j = 0; j < 6; j++) {
                    wn += w[i * 6 + j] * (double) w[i * 6 + j];
                }
                float v = r.out()[t * 9 + i];
                assertTrue(Float.isFinite(v) && v >= 0 && v <= Math.exp(wn / 2) / 3 * (1 + 1e-6), "feature " + t + ", " + i + " = " + v);
            }
        }
    }

    /** Bit-identical for the same inputs and thread count (the GEMM may split its sums by thread count, as every GEMM user does). */
    @Test
    void deterministicAcrossRuns() {
        FavorFeatures f = new FavorFeatures(97, 3, 16, 59);
        float[] x = x(61, 97 * 3 * 16, 16);
        float[] w = gaussian(62, 59 * 16);
        float[] dout = gaussian(63, 97 * 3 * 59);
        float[] dx0 = gaussian(64, x.length);
        for (boolean query : new boolean[] {true, false}) {
            Run a = run(cpu, x, w, dout, dx0, f, query);
            Run b = run(cpu, x, w, dout, dx0, f, query);
            assertArrayEquals(a.out(), b.out());
            assertArrayEquals(a.dx(), b.dx());
        }
    }

    @Test
    void badCallsNameTheArgument() {
        for (Device d : new Device[] {cpu, ref}) {
            try (Tensor x = d.allocate(DType.F32, 5, 2 * 4); Tensor w = d.allocate(DType.F32, 3, 4);
                 Tensor out = d.allocate(DType.F32, 5, 2 * 3); Tensor badOut = d.allocate(DType.F32, 5, 2 * 4);
                 Tensor badX = d.allocate(DType.F32, 5, 7); Tensor dx = d.allocate(DType.F32, 5, 2 * 3)) {
                Backend be = d.backend();
                String m = assertThrows(IllegalArgumentException.class, () -> be.favorFeatures(out, badX, w, 2, true))
                        .getMessage();
                assertTrue(m.contains("favor features x"), m);
                m = assertThrows(IllegalArgumentException.class, () -> be.favorFeatures(badOut, x, w, 2, true)).getMessage();
                assertTrue(m.contains("favor features out") && m.contains("[5, 2·3]"), m);
                m = assertThrows(IllegalArgumentException.class, () -> be.favorFeatures(out, x, w, 0, false)).getMessage();
                assertTrue(m.contains("heads must be ≥ 1"), m);
                m = assertThrows(IllegalArgumentException.class,
                        () -> be.favorFeaturesBackward(dx, out, out, x, w, 2, true)).getMessage();
                assertTrue(m.contains("favor features dx"), m);
            }
            try (Tensor x = d.allocate(DType.F32, 5, 4); Tensor w = d.allocate(DType.F32, 4, 4)) {
                String m = assertThrows(IllegalArgumentException.class, () -> d.backend().favorFeatures(x, x, w, 1, true))
                        .getMessage();
                assertTrue(m.contains("must not overlap x"), m);
            }
        }
    }
}
