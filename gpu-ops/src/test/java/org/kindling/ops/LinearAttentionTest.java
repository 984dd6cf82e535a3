package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.kindling.ops.AttentionTest.assertOracle;
import static org.kindling.ops.AttentionTest.cu;
import static org.kindling.ops.AttentionTest.gaussian;
import static org.kindling.ops.Reference.widen;

import java.util.Arrays;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.kindling.ops.cpu.CpuDevice;

/**
 * Causal linear attention: the blockwise CPU kernels against the fp64 {@link Reference} under
 * {@link AttentionTest}'s oracle (error at most 2× that of a naive fp32 quadratic implementation
 * for out, 3× for the gradients), and the invariants that hold whatever the rounding: the
 * recurrent step equals the forward, sequences do not leak into each other, results do not depend
 * on the thread count, and no T×F×D buffer is allocated.
 */
class LinearAttentionTest {
    private static final int NH = 2;
    private static final int F = 59;
    private static final int D = 33;
    private static final float EPS = 1e-6f;
    /** Lengths of the packed batch: a single token, less than two chunks, and just over 16. */
    private static final int[] CU = cu(1, 97, 1025);

    private static Device dev;

    @BeforeAll
    static void open() {
        dev = CpuDevice.open(3);
    }

    @AfterAll
    static void close() {
        dev.close();
    }

    /** φ(x) = elu(x) + 1 of normal data: the non-negative features the kernels take. */
    static float[] features(long seed, int n) {
        float[] x = gaussian(seed, n);
        for (int i = 0; i < n; i++) {
            x[i] = x[i] > 0 ? x[i] + 1 : (float) Math.exp(x[i]);
        }
        return x;
    }

    record Data(int[] cu, float[] q, float[] k, float[] v, float[] dout) {
        int tokens() {
            return cu[cu.length - 1];
        }

        LinearAttention layout() {
            return new LinearAttention(cu, tokens(), NH, F, D);
        }
    }

    static Data data(int[] cu, long seed) {
        int t = cu[cu.length - 1];
        return new Data(cu, features(seed, t * NH * F), features(seed + 1, t * NH * F), gaussian(seed + 2, t * NH * D),
                gaussian(seed + 3, t * NH * D));
    }

    record Run(float[] out, float[] dq, float[] dk, float[] dv) {
    }

    /** Forward and backward on device d, on fresh tensors (gradients start at zero). */
    static Run fused(Device d, Data x) {
        Backend be = d.backend();
        try (Tensor q = d.fromFloats(x.q(), x.q().length); Tensor k = d.fromFloats(x.k(), x.k().length);
             Tensor v = d.fromFloats(x.v(), x.v().length); Tensor g = d.fromFloats(x.dout(), x.dout().length);
             Tensor cuT = d.fromInts(x.cu(), x.cu().length); Tensor out = d.allocate(DType.F32, x.v().length);
             Tensor dq = d.allocate(DType.F32, x.q().length); Tensor dk = d.allocate(DType.F32, x.k().length);
             Tensor dv = d.allocate(DType.F32, x.v().length)) {
            Varlen cu = Varlen.of(cuT, x.cu());
            be.linearAttentionForward(out, q, k, v, cu, NH, EPS);
            be.linearAttentionBackward(dq, dk, dv, g, q, k, v, cu, NH, EPS);
            return new Run(out.toFloatArray(), dq.toFloatArray(), dk.toFloatArray(), dv.toFloatArray());
        }
    }

    /** The quadratic form in plain fp32 loops: what the oracle measures the fused kernels against. */
    static Run naive(Data x) {
        int f = F;
        int d = D;
        float[] out = new float[x.v().length];
        float[] den = new float[x.tokens() * NH];
        float[] dq = new float[x.q().length];
        float[] dk = new float[x.k().length];
        float[] dv = new float[x.v().length];
        int[] cu = x.cu();
        for (int b = 0; b + 1 < cu.length; b++) {
            for (int h = 0; h < NH; h++) {
                for (int t = cu[b]; t < cu[b + 1]; t++) {
                    float n = EPS;
                    float[] num = new float[d];
                    for (int j = cu[b]; j <= t; j++) {
                        float s = dot(x.q(), (t * NH + h) * f, x.k(), (j * NH + h) * f, f);
                        n += s;
                        for (int e = 0; e < d; e++) {
                            num[e] += s * x.v()[(j * NH + h) * d + e];
                        }
                    }
                    den[t * NH + h] = n;
                    for (int e = 0; e < d; e++) {
                        out[(t * NH + h) * d + e] = num[e] / n;
                    }
                }
                for (int t = cu[b]; t < cu[b + 1]; t++) {
                    int qt = (t * NH + h) * f;
                    int ot = (t * NH + h) * d;
                    float n = den[t * NH + h];
                    float c = -dot(x.dout(), ot, out, ot, d) / n;
                    for (int j = cu[b]; j <= t; j++) {
                        int kj = (j * NH + h) * f;
                        int vj = (j * NH + h) * d;
                        float s = dot(x.q(), qt, x.k(), kj, f);
                        float ds = dot(x.v(), vj, x.dout(), ot, d) / n + c;
                        for (int e = 0; e < f; e++) {
                            dq[qt + e] += ds * x.k()[kj + e];
                            dk[kj + e] += ds * x.q()[qt + e];
                        }
                        for (int e = 0; e < d; e++) {
                            dv[vj + e] += s * x.dout()[ot + e] / n;
                        }
                    }
                }
            }
        }
        return new Run(out, dq, dk, dv);
    }

    private static float dot(float[] a, int ao, float[] b, int bo, int n) {
        float s = 0;
        for (int i = 0; i < n; i++) {
            s += a[ao + i] * b[bo + i];
        }
        return s;
    }

    @Test
    void blockwiseKernelsMatchTheOracle() {
        Data x = data(CU, 1);
        double[] ref = Reference.linearAttention(x.layout(), widen(x.q()), widen(x.k()), widen(x.v()), EPS);
        double[][] grad = Reference.linearAttentionBackward(x.layout(), widen(x.dout()), widen(x.q()), widen(x.k()),
                widen(x.v()), EPS);
        Run f = fused(dev, x);
        Run n = naive(x);
        assertOracle("out", ref, f.out(), n.out(), 2);
        assertOracle("dq", grad[0], f.dq(), n.dq(), 3);
        assertOracle("dk", grad[1], f.dk(), n.dk(), 3);
        assertOracle("dv", grad[2], f.dv(), n.dv(), 3);
    }

    /** Steps one sequence through {@code tokensPerCall}-token calls from zero state; returns its out. */
    private static float[] stepped(Data x, int b, int tokensPerCall, double[] finalState) {
        int r0 = x.cu()[b];
        int len = x.cu()[b + 1] - r0;
        float[] out = new float[len * NH * D];
        Backend be = dev.backend();
        try (Tensor state = dev.allocate(DType.F32, NH, F, D); Tensor norm = dev.allocate(DType.F32, NH, F)) {
            for (int t0 = 0; t0 < len; t0 += tokensPerCall) {
                int t = Math.min(tokensPerCall, len - t0);
                try (Tensor q = dev.fromFloats(rows(x.q(), r0 + t0, t, NH * F), t, NH * F);
                     Tensor k = dev.fromFloats(rows(x.k(), r0 + t0, t, NH * F), t, NH * F);
                     Tensor v = dev.fromFloats(rows(x.v(), r0 + t0, t, NH * D), t, NH * D);
                     Tensor o = dev.allocate(DType.F32, t, NH * D)) {
                    be.linearAttentionStep(o, state, norm, q, k, v, NH, EPS);
                    System.arraycopy(o.toFloatArray(), 0, out, t0 * NH * D, t * NH * D);
                }
            }
            Check.close("state after " + len + " tokens", finalState, state.toFloatArray(), 1e-3, 1e-5);
        }
        return out;
    }

    private static float[] rows(float[] x, int r0, int n, int width) {
        return Arrays.copyOfRange(x, r0 * width, (r0 + n) * width);
    }

    @Test
    void steppingEveryTokenEqualsTheBlockwiseForward() {
        Data x = data(CU, 2);
        float[] forward = fused(dev, x).out();
        for (int b = 0; b + 1 < CU.length; b++) {
            int r0 = CU[b];
            int len = CU[b + 1] - r0;
            double[] state = new double[NH * F * D];
            for (int t = r0; t < r0 + len; t++) {
                for (int h = 0; h < NH; h++) {
                    for (int a = 0; a < F; a++) {
                        for (int e = 0; e < D; e++) {
                            state[(h * F + a) * D + e] += (double) x.k()[(t * NH + h) * F + a] * x.v()[(t * NH + h) * D + e];
                        }
                    }
                }
            }
            double[] want = widen(rows(forward, r0, len, NH * D));
            for (int perCall : new int[] {1, 7, len}) {
                Check.close("sequence " + b + " stepped " + perCall + " tokens at a time", want, stepped(x, b, perCall, state),
                        2e-5, 2e-4);
            }
        }
    }

    @Test
    void sequencesDoNotLeakIntoEachOther() {
        Data x = data(CU, 3);
        Data y = data(CU, 4);
        // y's middle sequence replaced by x's: only the other two sequences differ between x and y.
        int lo = CU[1];
        int hi = CU[2];
        System.arraycopy(x.q(), lo * NH * F, y.q(), lo * NH * F, (hi - lo) * NH * F);
        System.arraycopy(x.k(), lo * NH * F, y.k(), lo * NH * F, (hi - lo) * NH * F);
        System.arraycopy(x.v(), lo * NH * D, y.v(), lo * NH * D, (hi - lo) * NH * D);
        System.arraycopy(x.dout(), lo * NH * D, y.dout(), lo * NH * D, (hi - lo) * NH * D);
        Run rx = fused(dev, x);
        Run ry = fused(dev, y);
        assertArrayEquals(rows(rx.out(), lo, hi - lo, NH * D), rows(ry.out(), lo, hi - lo, NH * D), "out");
        assertArrayEquals(rows(rx.dq(), lo, hi - lo, NH * F), rows(ry.dq(), lo, hi - lo, NH * F), "dq");
        assertArrayEquals(rows(rx.dk(), lo, hi - lo, NH * F), rows(ry.dk(), lo, hi - lo, NH * F), "dk");
        assertArrayEquals(rows(rx.dv(), lo, hi - lo, NH * D), rows(ry.dv(), lo, hi - lo, NH * D), "dv");
        assertFalse(Arrays.equals(rows(rx.out(), hi, 64, NH * D), rows(ry.out(), hi, 64, NH * D)), "the last sequence differs");
        // A sequence's first token attends only itself: its out is its own v, whatever came before.
        double[] first = widen(rows(x.v(), lo, 1, NH * D));
        Check.close("first token of sequence 1", first, rows(rx.out(), lo, 1, NH * D), 1e-5, 1e-5);
    }

    @Test
    void resultsAreBitIdenticalWhateverTheThreadCount() {
        Data x = data(CU, 5);
        Run one;
        Run three;
        Run again;
        try (Device d = CpuDevice.open(1)) {
            one = fused(d, x);
        }
        try (Device d = CpuDevice.open(3)) {
            three = fused(d, x);
            again = fused(d, x);
        }
        for (Run r : new Run[] {three, again}) {
            assertArrayEquals(one.out(), r.out(), "out");
            assertArrayEquals(one.dq(), r.dq(), "dq");
            assertArrayEquals(one.dk(), r.dk(), "dk");
            assertArrayEquals(one.dv(), r.dv(), "dv");
        }
    }

    @Test
    void scratchStaysFarBelowATokenByFeatureByValueBuffer() {
        Data x = data(CU, 6);
        long inputs;
        long peak;
        try (Device d = CpuDevice.open(3)) {
            fused(d, x);
            d.resetPeak();
            fused(d, x);
            peak = d.peakBytes();
        }
        inputs = 4L * (4L * x.q().length + 4L * x.v().length + CU.length);
        long txfxd = 4L * x.tokens() * NH * F * D;
        assertTrue(peak - inputs < txfxd / 8, "scratch " + (peak - inputs) + " bytes vs T·NH·F·D floats " + txfxd);
    }

    @Test
    void referenceStepEqualsReferenceForward() {
        Data x = data(cu(1, 70), 7);
        double[] fwd = Reference.linearAttention(x.layout(), widen(x.q()), widen(x.k()), widen(x.v()), EPS);
        for (int b = 0; b < 2; b++) {
            int r0 = x.cu()[b];
            int len = x.cu()[b + 1] - r0;
            LinearAttention one = new LinearAttention(new int[] {0, len}, len, NH, F, D);
            double[][] s = Reference.linearAttentionStep(one, new double[NH * F * D], new double[NH * F],
                    widen(rows(x.q(), r0, len, NH * F)), widen(rows(x.k(), r0, len, NH * F)),
                    widen(rows(x.v(), r0, len, NH * D)), EPS);
            double[] want = Arrays.copyOfRange(fwd, r0 * NH * D, (r0 + len) * NH * D);
            for (int i = 0; i < want.length; i++) {
                assertTrue(Math.abs(want[i] - s[0][i]) <= 1e-12 * (1 + Math.abs(want[i])), "element " + i);
            }
        }
    }

    @Test
    void referenceBackwardMatchesFiniteDifferences() {
        int[] cu = cu(3, 5);
        int nh = 2;
        int f = 4;
        int d = 3;
        double eps = 1e-3;
        LinearAttention l = new LinearAttention(cu, 8, nh, f, d);
        double[] q = ReferenceGradientTest.data(20, 8 * nh * f, 0.1, 2);
        double[] k = ReferenceGradientTest.data(21, 8 * nh * f, 0.1, 2);
        double[] v = ReferenceGradientTest.data(22, 8 * nh * d);
        double[] dout = ReferenceGradientTest.data(23, 8 * nh * d);
        double[][] g = Reference.linearAttentionBackward(l, dout, q, k, v, eps);
        ReferenceGradientTest.assertGradient("linear attention dq",
                ReferenceGradientTest.numeric(x -> Reference.linearAttention(l, x, k, v, eps), q, dout), g[0]);
        ReferenceGradientTest.assertGradient("linear attention dk",
                ReferenceGradientTest.numeric(x -> Reference.linearAttention(l, q, x, v, eps), k, dout), g[1]);
        ReferenceGradientTest.assertGradient("linear attention dv",
                ReferenceGradientTest.numeric(x -> Reference.linearAttention(l, q, k, x, eps), v, dout), g[2]);
    }

    @Test
    void badCallsFailNamingTheArgument() {
        Backend be = dev.backend();
        try (Tensor q = dev.fromFloats(new float[] {1, 2, 0.5f, -0.25f}, 2, 2); Tensor k = dev.fromFloats(new float[4], 2, 2);
             Tensor v = dev.allocate(DType.F32, 2, 3); Tensor out = dev.allocate(DType.F32, 2, 3);
             Tensor cuT = dev.fromInts(new int[] {0, 2}, 2); Tensor badCuT = dev.fromInts(new int[] {0, 3}, 2);
             Tensor state = dev.allocate(DType.F32, 1, 2, 3); Tensor norm = dev.allocate(DType.F32, 1, 3)) {
            Varlen badCu = Varlen.of(badCuT, new int[] {0, 3});
            Varlen cu = Varlen.of(cuT, new int[] {0, 2});
            String neg = assertThrows(IllegalArgumentException.class,
                    () -> be.linearAttentionForward(out, q, k, v, cu, 1, EPS)).getMessage();
            assertTrue(neg.contains("q[1, 1] = -0.25") && neg.contains("non-negative"), neg);
            String eps = assertThrows(IllegalArgumentException.class,
                    () -> be.linearAttentionForward(out, k, k, v, cu, 1, 0f)).getMessage();
            assertTrue(eps.contains("eps"), eps);
            String rows = assertThrows(IllegalArgumentException.class,
                    () -> be.linearAttentionForward(out, k, k, v, badCu, 1, EPS)).getMessage();
            assertTrue(rows.contains("q"), rows);
            String stateShape = assertThrows(IllegalArgumentException.class,
                    () -> be.linearAttentionStep(out, state, norm, k, k, v, 1, EPS)).getMessage();
            assertTrue(stateShape.contains("norm"), stateShape);
            String grads = assertThrows(IllegalArgumentException.class,
                    () -> be.linearAttentionBackward(v, k, v, out, k, k, v, cu, 1, EPS)).getMessage();
            assertTrue(grads.contains("dq"), grads);
        }
    }
}
