package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
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
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.kindling.ops.cpu.CpuDevice;
import org.kindling.ops.reference.ReferenceDevice;

/**
 * The diagonal state-space convolution (S4D, H3) against flash-attention's relative oracle, as
 * {@link CausalConvTest}: against the fp64 {@link Reference}, the CPU kernel's max error must be at
 * most 2× that of a naive fp32 implementation (kernel by fp32 powers, direct fp32 sums, fp32 chain
 * rule) for y and 3× for every gradient. Also: state passing over small blocks equals one block
 * equals the direct convolution of the reference kernel, stepping every token equals the forward,
 * sequences never leak, results are bit-identical across thread counts, the reference backward
 * matches finite differences, and the reference device agrees with the CPU backend.
 */
class SsmConvTest {
    private static final int C = 59;
    private static final int[] BLOCKS = {1, 16, 64, 1024};
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

    /** Parameters of C channels and N modes: S4D-Lin-like A = −exp(aRe) + i·aIm with aIm ≈ π·n, dt in [0.001, 0.1]. */
    record P(int n, float[] logDt, float[] aRe, float[] aIm, float[] c) {
        static P random(long seed, int n) {
            float[] logDt = Check.uniform(seed, C, Math.log(0.001), Math.log(0.1));
            float[] aRe = Check.uniform(seed + 1, C * n, Math.log(0.3), Math.log(0.7));
            float[] aIm = Check.uniform(seed + 2, C * n, -0.5, 0.5);
            for (int i = 0; i < aIm.length; i++) {
                aIm[i] += (float) (Math.PI * (i % n));
            }
            return new P(n, logDt, aRe, aIm, gaussian(seed + 3, C * n * 2));
        }
    }

    record Run(float[] y, float[] du, float[] dlogDt, float[] daRe, float[] daIm, float[] dc) {
        float[][] grads() {
            return new float[][] {du, dlogDt, daRe, daIm, dc};
        }
    }

    private static final String[] GRADS = {"du", "dlogDt", "daRe", "daIm", "dc"};

    /** Forward, then backward into gradients that start at init (du, dlogDt, daRe, daIm, dc), or zeros. */
    static Run run(Device d, int[] cuSeqlens, P p, float[] u, float[] dy, int block, float[][] init) {
        int t = cuSeqlens[cuSeqlens.length - 1];
        int n = p.n();
        Backend be = d.backend();
        try (Tensor tu = d.fromFloats(u, t, C); Tensor tdy = d.fromFloats(dy, t, C);
             Tensor logDt = d.fromFloats(p.logDt(), C); Tensor aRe = d.fromFloats(p.aRe(), C, n);
             Tensor aIm = d.fromFloats(p.aIm(), C, n); Tensor c = d.fromFloats(p.c(), C, n, 2);
             Tensor csT = d.fromInts(cuSeqlens, cuSeqlens.length); Tensor y = d.allocate(DType.F32, t, C);
             Tensor du = d.fromFloats(init[0], t, C); Tensor dlogDt = d.fromFloats(init[1], C);
             Tensor daRe = d.fromFloats(init[2], C, n); Tensor daIm = d.fromFloats(init[3], C, n);
             Tensor dc = d.fromFloats(init[4], C, n, 2)) {
            Varlen cs = Varlen.of(csT, cuSeqlens);
            be.ssmConvForward(y, tu, logDt, aRe, aIm, c, cs, block);
            be.ssmConvBackward(du, dlogDt, daRe, daIm, dc, tdy, tu, logDt, aRe, aIm, c, cs, block);
            return new Run(y.toFloatArray(), du.toFloatArray(), dlogDt.toFloatArray(), daRe.toFloatArray(),
                    daIm.toFloatArray(), dc.toFloatArray());
        }
    }

    static Run run(Device d, int[] cuSeqlens, P p, float[] u, float[] dy, int block) {
        int n = p.n();
        return run(d, cuSeqlens, p, u, dy, block,
                new float[][] {new float[u.length], new float[C], new float[C * n], new float[C * n], new float[C * n * 2]});
    }

    static double[][] reference(int[] cuSeqlens, P p, float[] u, float[] dy) {
        double[] y = Reference.ssmConv(widen(u), widen(p.logDt()), widen(p.aRe()), widen(p.aIm()), widen(p.c()),
                cuSeqlens, C);
        double[][] g = Reference.ssmConvBackward(widen(dy), widen(u), widen(p.logDt()), widen(p.aRe()),
                widen(p.aIm()), widen(p.c()), cuSeqlens, C);
        return new double[][] {y, g[0], g[1], g[2], g[3], g[4]};
    }

    /** A complex number in fp32 for the naive implementation. */
    private record F(float re, float im) {
        F times(F o) {
            return new F(re * o.re - im * o.im, re * o.im + im * o.re);
        }

        F times(float s) {
            return new F(re * s, im * s);
        }

        F plus(F o) {
            return new F(re + o.re, im + o.im);
        }

        F minus(F o) {
            return new F(re - o.re, im - o.im);
        }

        F over(F o) {
            float d = o.re * o.re + o.im * o.im;
            return new F((re * o.re + im * o.im) / d, (im * o.re - re * o.im) / d);
        }
    }

    /** One mode in fp32: {A, C̃, Ā, q = (Ā − 1)/A, w = C̃·q}. */
    private static F[] mode(P p, int ch, int n) {
        int i = ch * p.n() + n;
        float dt = (float) Math.exp(p.logDt()[ch]);
        F a = new F((float) -Math.exp(p.aRe()[i]), p.aIm()[i]);
        float mag = (float) Math.exp(dt * a.re());
        F bar = new F(mag * (float) Math.cos(dt * a.im()), mag * (float) Math.sin(dt * a.im()));
        F q = bar.minus(new F(1, 0)).over(a);
        F ct = new F(p.c()[2 * i], p.c()[2 * i + 1]);
        return new F[] {a, ct, bar, q, ct.times(q)};
    }

    /** The same computation as the reference in fp32 and the obvious order: powers by repeated products, direct sums. */
    static Run naive(int[] cuSeqlens, P p, float[] u, float[] dy) {
        int lags = 0;
        for (int s = 0; s + 1 < cuSeqlens.length; s++) {
            lags = Math.max(lags, cuSeqlens[s + 1] - cuSeqlens[s]);
        }
        float[] k = new float[lags * C];
        for (int ch = 0; ch < C; ch++) {
            for (int n = 0; n < p.n(); n++) {
                F[] m = mode(p, ch, n);
                F pw = new F(1, 0);
                for (int j = 0; j < lags; j++) {
                    k[j * C + ch] += 2 * m[4].times(pw).re();
                    pw = pw.times(m[2]);
                }
            }
        }
        CausalConvTest.Run conv = CausalConvTest.naive(cuSeqlens, C, u, k, dy);
        float[] dLogDt = new float[C];
        float[] dRe = new float[C * p.n()];
        float[] dIm = new float[C * p.n()];
        float[] dc = new float[C * p.n() * 2];
        for (int ch = 0; ch < C; ch++) {
            float dt = (float) Math.exp(p.logDt()[ch]);
            for (int n = 0; n < p.n(); n++) {
                int i = ch * p.n() + n;
                F[] m = mode(p, ch, n);
                F a = m[0];
                F dwdA = m[1].times(m[2].times(a).times(dt).minus(m[2].minus(new F(1, 0)))).over(a.times(a));
                F dwdDt = m[1].times(m[2]);
                F pw = new F(1, 0);
                for (int j = 0; j < lags; j++) {
                    float gk = 2 * conv.dk()[j * C + ch];
                    F dA = dwdA.times(pw).plus(m[4].times(pw).times(j * dt));
                    F dDt = dwdDt.times(pw).plus(m[4].times(pw).times(a).times(j));
                    F dC = m[3].times(pw);
                    dc[2 * i] += gk * dC.re();
                    dc[2 * i + 1] -= gk * dC.im();
                    dRe[i] += gk * dA.re() * a.re();
                    dIm[i] -= gk * dA.im();
                    dLogDt[ch] += gk * dDt.re() * dt;
                    pw = pw.times(m[2]);
                }
            }
        }
        return new Run(conv.y(), conv.du(), dLogDt, dRe, dIm, dc);
    }

    @ParameterizedTest
    @ValueSource(ints = {1, 3, 32})
    void fusedMatchesOracle(int n) {
        int[] cuSeqlens = cu(1, 97, 1025);
        int t = cuSeqlens[cuSeqlens.length - 1];
        long seed = 17L * n;
        P p = P.random(seed, n);
        float[] u = gaussian(seed + 10, t * C);
        float[] dy = gaussian(seed + 11, t * C);
        double[][] want = reference(cuSeqlens, p, u, dy);
        Run nv = naive(cuSeqlens, p, u, dy);
        for (int block : BLOCKS) {
            Run f = run(cpu, cuSeqlens, p, u, dy, block);
            String at = " (N = " + n + ", block " + block + ")";
            assertOracle("y" + at, want[0], f.y(), nv.y(), 2);
            for (int g = 0; g < GRADS.length; g++) {
                assertOracle(GRADS[g] + at, want[g + 1], f.grads()[g], nv.grads()[g], 3);
            }
        }
    }

    /**
     * State passing over blocks of 16 and of 1 token equals one block spanning every sequence, and both
     * equal {@link Backend#causalConvForward} with the reference kernel. The FFT's fp32 error scales
     * with the whole signal, so the bound is relative to the largest value: 1e-5 of it, about 100 ulps.
     */
    @Test
    void statePassingEqualsOneBlockEqualsDirectConvolution() {
        int[] cuSeqlens = cu(1, 97, 1025);
        int t = cuSeqlens[cuSeqlens.length - 1];
        P p = P.random(41, 3);
        float[] u = gaussian(42, t * C);
        float[] dy = new float[t * C];
        float[] one = run(cpu, cuSeqlens, p, u, dy, 1025).y();
        double[] k = Reference.ssmKernel(widen(p.logDt()), widen(p.aRe()), widen(p.aIm()), widen(p.c()), C, 1025);
        float[] direct;
        try (Tensor tu = cpu.fromFloats(u, t, C); Tensor tk = cpu.allocate(DType.F32, 1025, C).copyFrom(k);
             Tensor csT = cpu.fromInts(cuSeqlens, cuSeqlens.length); Tensor y = cpu.allocate(DType.F32, t, C)) {
            Varlen cs = Varlen.of(csT, cuSeqlens);
            cpu.backend().causalConvForward(y, tu, tk, cs);
            direct = y.toFloatArray();
        }
        close("one block vs direct convolution", widen(direct), one);
        for (int block : new int[] {1, 16}) {
            close("state passing over blocks of " + block, widen(one), run(cpu, cuSeqlens, p, u, dy, block).y());
        }
    }

    private static void close(String what, double[] want, float[] got) {
        double scale = 0;
        for (double v : want) {
            scale = Math.max(scale, Math.abs(v));
        }
        assertTrue(scale > 1, what + " holds data");
        Check.close(what, want, got, 1e-5 * scale, 0);
    }

    /** Stepping a 300-token sequence in uneven chunks from a zeroed state gives the forward's y, on both devices. */
    @Test
    void steppingEveryTokenEqualsTheForward() {
        int len = 300;
        P p = P.random(51, 32);
        float[] u = gaussian(52, len * C);
        float[] want = run(cpu, cu(len), p, u, new float[len * C], 64).y();
        for (Device d : new Device[] {cpu, ref}) {
            float[] got = new float[len * C];
            try (Tensor logDt = d.fromFloats(p.logDt(), C); Tensor aRe = d.fromFloats(p.aRe(), C, p.n());
                 Tensor aIm = d.fromFloats(p.aIm(), C, p.n()); Tensor c = d.fromFloats(p.c(), C, p.n(), 2);
                 Tensor state = d.allocate(DType.F32, C, p.n(), 2)) {
                int at = 0;
                for (int chunk : new int[] {1, 40, 3, 256}) {
                    try (Tensor tu = d.fromFloats(Arrays.copyOfRange(u, at * C, (at + chunk) * C), chunk, C);
                         Tensor y = d.allocate(DType.F32, chunk, C)) {
                        d.backend().ssmStep(y, state, tu, logDt, aRe, aIm, c);
                        System.arraycopy(y.toFloatArray(), 0, got, at * C, chunk * C);
                    }
                    at += chunk;
                }
            }
            close("stepping on " + d.backend().name(), widen(want), got);
        }
    }

    @Test
    void referenceBackwardMatchesFiniteDifferences() {
        int c = 2;
        int n = 2;
        int[] cuSeqlens = cu(3, 1, 5);
        int t = 9;
        double[] u = ReferenceGradientTest.data(81, t * c);
        double[] dy = ReferenceGradientTest.data(82, t * c);
        double[] logDt = ReferenceGradientTest.data(83, c, -3, -0.5);
        double[] aRe = ReferenceGradientTest.data(84, c * n, -1, 0);
        double[] aIm = ReferenceGradientTest.data(85, c * n, -3, 3);
        double[] cc = ReferenceGradientTest.data(86, c * n * 2);
        double[][] g = Reference.ssmConvBackward(dy, u, logDt, aRe, aIm, cc, cuSeqlens, c);
        ReferenceGradientTest.assertGradient("ssm du",
                ReferenceGradientTest.numeric(x -> Reference.ssmConv(x, logDt, aRe, aIm, cc, cuSeqlens, c), u, dy), g[0]);
        ReferenceGradientTest.assertGradient("ssm dlogDt",
                ReferenceGradientTest.numeric(x -> Reference.ssmConv(u, x, aRe, aIm, cc, cuSeqlens, c), logDt, dy), g[1]);
        ReferenceGradientTest.assertGradient("ssm daRe",
                ReferenceGradientTest.numeric(x -> Reference.ssmConv(u, logDt, x, aIm, cc, cuSeqlens, c), aRe, dy), g[2]);
        ReferenceGradientTest.assertGradient("ssm daIm",
                ReferenceGradientTest.numeric(x -> Reference.ssmConv(u, logDt, aRe, x, cc, cuSeqlens, c), aIm, dy), g[3]);
        ReferenceGradientTest.assertGradient("ssm dc",
                ReferenceGradientTest.numeric(x -> Reference.ssmConv(u, logDt, aRe, aIm, x, cuSeqlens, c), cc, dy), g[4]);
    }

    /** Changing one sequence's inputs leaves every other sequence's y and du bit-identical. */
    @Test
    void sequencesDoNotLeak() {
        int[] cuSeqlens = cu(97, 1025, 1, 200);
        int t = cuSeqlens[cuSeqlens.length - 1];
        P p = P.random(91, 3);
        float[] u = gaussian(92, t * C);
        float[] dy = gaussian(93, t * C);
        Run before = run(cpu, cuSeqlens, p, u, dy, 64);
        float[] u2 = u.clone();
        float[] dy2 = dy.clone();
        for (int i = cuSeqlens[1] * C; i < cuSeqlens[2] * C; i++) {
            u2[i] += 1;
            dy2[i] -= 1;
        }
        Run after = run(cpu, cuSeqlens, p, u2, dy2, 64);
        for (int s : new int[] {0, 2, 3}) {
            int from = cuSeqlens[s] * C;
            int to = cuSeqlens[s + 1] * C;
            assertArrayEquals(Arrays.copyOfRange(before.y(), from, to), Arrays.copyOfRange(after.y(), from, to),
                    "y of sequence " + s);
            assertArrayEquals(Arrays.copyOfRange(before.du(), from, to), Arrays.copyOfRange(after.du(), from, to),
                    "du of sequence " + s);
        }
        assertTrue(!Arrays.equals(before.y(), after.y()), "the changed sequence's y changes");
    }

    /** Every item has one thread and a fixed order: the same bits for 1 and 3 threads. */
    @Test
    void deterministicAcrossRunsAndThreadCounts() {
        int[] cuSeqlens = cu(1, 97, 1025, 96);
        int t = cuSeqlens[cuSeqlens.length - 1];
        P p = P.random(101, 32);
        float[] u = gaussian(102, t * C);
        float[] dy = gaussian(103, t * C);
        for (int block : new int[] {16, 1024}) {
            Run a = run(cpu, cuSeqlens, p, u, dy, block);
            Run b = run(cpu, cuSeqlens, p, u, dy, block);
            Run one;
            try (Device single = CpuDevice.open(1)) {
                one = run(single, cuSeqlens, p, u, dy, block);
            }
            for (Run r : new Run[] {b, one}) {
                assertArrayEquals(a.y(), r.y());
                for (int g = 0; g < GRADS.length; g++) {
                    assertArrayEquals(a.grads()[g], r.grads()[g], GRADS[g]);
                }
            }
        }
    }

    /** The fp64 reference device and the CPU agree, with the gradients accumulating onto random values. */
    @Test
    void referenceBackendAgreesWithTheCpuBackend() {
        int[] cuSeqlens = cu(1, 97, 130, 7);
        int t = cuSeqlens[cuSeqlens.length - 1];
        int n = 3;
        P p = P.random(111, n);
        float[] u = gaussian(112, t * C);
        float[] dy = gaussian(113, t * C);
        float[][] init = {gaussian(114, t * C), gaussian(115, C), gaussian(116, C * n), gaussian(117, C * n),
                gaussian(118, C * n * 2)};
        Run c = run(cpu, cuSeqlens, p, u, dy, 16, init);
        Run r = run(ref, cuSeqlens, p, u, dy, 16, init);
        close("ssm y", widen(r.y()), c.y());
        for (int g = 0; g < GRADS.length; g++) {
            close("ssm " + GRADS[g], widen(r.grads()[g]), c.grads()[g]);
        }
        double[][] want = reference(cuSeqlens, p, u, dy);
        Check.close("reference dc accumulates", Check.plus(want[5], init[4]), r.dc(), 1e-5, 1e-6);
    }

    @Test
    void badCallsNameTheArgument() {
        try (Tensor u = cpu.allocate(DType.F32, 10, 4); Tensor y = cpu.allocate(DType.F32, 10, 4);
             Tensor logDt = cpu.allocate(DType.F32, 4); Tensor aRe = cpu.allocate(DType.F32, 4, 2);
             Tensor aIm = cpu.allocate(DType.F32, 4, 2); Tensor c = cpu.allocate(DType.F32, 4, 2, 2);
             Tensor flatC = cpu.allocate(DType.F32, 4, 4); Tensor wideDt = cpu.allocate(DType.F32, 5);
             Tensor state = cpu.allocate(DType.F32, 4, 3, 2);
             Tensor csT = cpu.fromInts(new int[] {0, 6, 10}, 3); Tensor badCsT = cpu.fromInts(new int[] {0, 6, 9}, 3)) {
            Varlen badCs = Varlen.of(badCsT, new int[] {0, 6, 9});
            Varlen cs = Varlen.of(csT, new int[] {0, 6, 10});
            Backend be = cpu.backend();
            String m = assertThrows(IllegalArgumentException.class,
                    () -> be.ssmConvForward(y, u, logDt, aRe, aIm, c, cs, 0)).getMessage();
            assertTrue(m.contains("block must be at least 1"), m);
            m = assertThrows(IllegalArgumentException.class,
                    () -> be.ssmConvForward(y, u, logDt, aRe, aIm, flatC, cs, 4)).getMessage();
            assertTrue(m.contains("ssm c must be [4, 2, 2]"), m);
            m = assertThrows(IllegalArgumentException.class,
                    () -> be.ssmConvForward(y, u, wideDt, aRe, aIm, c, cs, 4)).getMessage();
            assertTrue(m.contains("ssm logDt must be [4]"), m);
            m = assertThrows(IllegalArgumentException.class,
                    () -> be.ssmConvForward(y, u, logDt, aRe, aIm, c, badCs, 4)).getMessage();
            assertTrue(m.contains("cu_seqlens ends at 9"), m);
            m = assertThrows(IllegalArgumentException.class,
                    () -> be.ssmConvForward(u, u, logDt, aRe, aIm, c, cs, 4)).getMessage();
            assertTrue(m.contains("must not overlap u"), m);
            m = assertThrows(IllegalArgumentException.class,
                    () -> be.ssmConvBackward(y, logDt, aRe, aIm, flatC, y, u, logDt, aRe, aIm, c, cs, 4)).getMessage();
            assertTrue(m.contains("ssm dc"), m);
            m = assertThrows(IllegalArgumentException.class,
                    () -> be.ssmStep(y, state, u, logDt, aRe, aIm, c)).getMessage();
            assertTrue(m.contains("ssm state must be [4, 2, 2]"), m);
        }
    }
}
