package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.kindling.ops.AttentionTest.assertOracle;
import static org.kindling.ops.AttentionTest.cu;
import static org.kindling.ops.AttentionTest.gaussian;
import static org.kindling.ops.Reference.widen;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
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
 * The causal long convolution (S4D, H3) against flash-attention's relative oracle, as
 * {@link AttentionTest}: measured against the fp64 {@link Reference}, the CPU kernel's max error
 * must be at most 2× that of a naive fp32 direct convolution for y and 3× for du and dk. Also: the
 * FFT path equals the direct path, the reference backward matches finite differences, sequences
 * never leak into each other, results are bit-identical across runs and thread counts, and the
 * reference device agrees with the CPU backend with accumulating gradients.
 */
class CausalConvTest {
    private static final int C = 59;
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

    record Run(float[] y, float[] du, float[] dk) {
    }

    /** Forward, then backward into du and dk that start at duInit and dkInit. */
    static Run run(Device d, int[] cuSeqlens, int c, float[] u, float[] k, float[] dy, float[] duInit, float[] dkInit) {
        int t = cuSeqlens[cuSeqlens.length - 1];
        int l = k.length / c;
        Backend be = d.backend();
        try (Tensor tu = d.fromFloats(u, t, c); Tensor tk = d.fromFloats(k, l, c); Tensor tdy = d.fromFloats(dy, t, c);
             Tensor csT = d.fromInts(cuSeqlens, cuSeqlens.length); Tensor y = d.allocate(DType.F32, t, c);
             Tensor du = d.fromFloats(duInit, t, c); Tensor dk = d.fromFloats(dkInit, l, c)) {
            Varlen cs = Varlen.of(csT, cuSeqlens);
            be.causalConvForward(y, tu, tk, cs);
            be.causalConvBackward(du, dk, tdy, tu, tk, cs);
            return new Run(y.toFloatArray(), du.toFloatArray(), dk.toFloatArray());
        }
    }

    static Run run(Device d, int[] cuSeqlens, int c, float[] u, float[] k, float[] dy) {
        return run(d, cuSeqlens, c, u, k, dy, new float[u.length], new float[k.length]);
    }

    /** The same sums as the reference, accumulated in fp32 in the obvious order. */
    static Run naive(int[] cuSeqlens, int c, float[] u, float[] k, float[] dy) {
        float[] y = new float[u.length];
        float[] du = new float[u.length];
        float[] dk = new float[k.length];
        int l = k.length / c;
        for (int s = 0; s + 1 < cuSeqlens.length; s++) {
            int base = cuSeqlens[s];
            int len = cuSeqlens[s + 1] - base;
            for (int ch = 0; ch < c; ch++) {
                for (int t = 0; t < len; t++) {
                    float acc = 0;
                    float accU = 0;
                    for (int j = 0; j <= Math.min(t, l - 1); j++) {
                        acc += k[j * c + ch] * u[(base + t - j) * c + ch];
                    }
                    for (int q = t; q < Math.min(len, t + l); q++) {
                        accU += k[(q - t) * c + ch] * dy[(base + q) * c + ch];
                    }
                    y[(base + t) * c + ch] = acc;
                    du[(base + t) * c + ch] = accU;
                }
                for (int j = 0; j < Math.min(len, l); j++) {
                    float acc = 0;
                    for (int t = j; t < len; t++) {
                        acc += dy[(base + t) * c + ch] * u[(base + t - j) * c + ch];
                    }
                    dk[j * c + ch] += acc;
                }
            }
        }
        return new Run(y, du, dk);
    }

    static Stream<int[]> layouts() {
        return Stream.of(cu(1), cu(97), cu(1025), cu(1, 97, 1025), cu(96, 97, 3, 300, 1));
    }

    @ParameterizedTest
    @MethodSource("layouts")
    void fusedMatchesOracle(int[] cuSeqlens) {
        int t = cuSeqlens[cuSeqlens.length - 1];
        int max = 0;
        for (int s = 0; s + 1 < cuSeqlens.length; s++) {
            max = Math.max(max, cuSeqlens[s + 1] - cuSeqlens[s]);
        }
        int l = max + 3; // k longer than any sequence: its tail is never read
        long seed = t * 31L + cuSeqlens.length;
        float[] u = gaussian(seed, t * C);
        float[] k = gaussian(seed + 1, l * C);
        float[] dy = gaussian(seed + 2, t * C);
        double[] y = Reference.causalConv(widen(u), widen(k), cuSeqlens, C);
        double[][] g = Reference.causalConvBackward(widen(dy), widen(u), widen(k), cuSeqlens, C);
        Run f = run(cpu, cuSeqlens, C, u, k, dy);
        Run n = naive(cuSeqlens, C, u, k, dy);
        assertOracle("y", y, f.y(), n.y(), 2);
        assertOracle("du", g[0], f.du(), n.du(), 3);
        assertOracle("dk", g[1], f.dk(), n.dk(), 3);
    }

    /**
     * Causality makes a 96-token sequence (the CPU sums up to 96 directly) the prefix of a
     * 1025-token one (by FFT) with the same first tokens; with dy zero after token 96 the long one's
     * du and dk are the short one's too. The FFT's fp32 error scales with the whole signal, so the bound is relative to
     * the largest value: 1e-5 of it, about 100 ulps.
     */
    @Test
    void fftConvolutionEqualsDirectConvolution() {
        int shortLen = 96;
        int longLen = 1025;
        float[] u = gaussian(71, longLen * C);
        float[] k = gaussian(72, longLen * C);
        float[] dy = gaussian(73, longLen * C);
        Arrays.fill(dy, shortLen * C, dy.length, 0f);
        Run direct = run(cpu, cu(shortLen), C, Arrays.copyOf(u, shortLen * C), k, Arrays.copyOf(dy, shortLen * C));
        Run fft = run(cpu, cu(longLen), C, u, k, dy);
        close("y", direct.y(), Arrays.copyOf(fft.y(), shortLen * C));
        float[] duWant = Arrays.copyOf(direct.du(), longLen * C);
        close("du", duWant, fft.du());
        close("dk", direct.dk(), fft.dk());
    }

    private static void close(String what, float[] want, float[] got) {
        double scale = 0;
        for (float v : want) {
            scale = Math.max(scale, Math.abs(v));
        }
        assertTrue(scale > 1, what + " holds data");
        Check.close(what, widen(want), got, 1e-5 * scale, 0);
    }

    /** Taps: at least the longest sequence (6), and a short kernel (2) with zero taps beyond it. */
    @ParameterizedTest
    @ValueSource(ints = {6, 2})
    void referenceBackwardMatchesFiniteDifferences(int l) {
        int c = 2;
        int[] cuSeqlens = cu(3, 1, 5);
        int t = 9;
        double[] u = ReferenceGradientTest.data(81 + l, t * c);
        double[] k = ReferenceGradientTest.data(82 + l, l * c);
        double[] dy = ReferenceGradientTest.data(83 + l, t * c);
        double[][] g = Reference.causalConvBackward(dy, u, k, cuSeqlens, c);
        ReferenceGradientTest.assertGradient("causal conv du, " + l + " taps",
                ReferenceGradientTest.numeric(x -> Reference.causalConv(x, k, cuSeqlens, c), u, dy), g[0]);
        ReferenceGradientTest.assertGradient("causal conv dk, " + l + " taps",
                ReferenceGradientTest.numeric(x -> Reference.causalConv(u, x, cuSeqlens, c), k, dy), g[1]);
    }

    /**
     * Changing one sequence's inputs leaves every other sequence's outputs bit-identical, with a
     * full-length kernel and short ones on the direct (1 tap) and FFT (64 taps) paths; the same
     * bits on 1 and 3 threads.
     */
    @ParameterizedTest
    @ValueSource(ints = {1025, 1, 64})
    void sequencesDoNotLeak(int l) {
        int[] cuSeqlens = cu(97, 1025, 1, 200);
        int t = cuSeqlens[cuSeqlens.length - 1];
        float[] u = gaussian(91 + l, t * C);
        float[] k = gaussian(92 + l, l * C);
        float[] dy = gaussian(93 + l, t * C);
        Run before = run(cpu, cuSeqlens, C, u, k, dy);
        float[] u2 = u.clone();
        float[] dy2 = dy.clone();
        for (int i = cuSeqlens[1] * C; i < cuSeqlens[2] * C; i++) {
            u2[i] += 1;
            dy2[i] -= 1;
        }
        Run after = run(cpu, cuSeqlens, C, u2, k, dy2);
        for (int s : new int[] {0, 2, 3}) {
            int from = cuSeqlens[s] * C;
            int to = cuSeqlens[s + 1] * C;
            assertArrayEquals(Arrays.copyOfRange(before.y(), from, to), Arrays.copyOfRange(after.y(), from, to),
                    "y of sequence " + s);
            assertArrayEquals(Arrays.copyOfRange(before.du(), from, to), Arrays.copyOfRange(after.du(), from, to),
                    "du of sequence " + s);
        }
        assertTrue(!Arrays.equals(before.y(), after.y()), "the changed sequence's y changes");
        try (Device single = CpuDevice.open(1)) {
            Run one = run(single, cuSeqlens, C, u, k, dy);
            assertArrayEquals(before.y(), one.y());
            assertArrayEquals(before.du(), one.du());
            assertArrayEquals(before.dk(), one.dk());
        }
    }

    /** Each (sequence, channel pair) is computed by one thread in a fixed order: same bits for 1 and 3 threads. */
    @Test
    void deterministicAcrossRunsAndThreadCounts() {
        int[] cuSeqlens = cu(1, 97, 1025, 96);
        int t = cuSeqlens[cuSeqlens.length - 1];
        float[] u = gaussian(101, t * C);
        float[] k = gaussian(102, 1025 * C);
        float[] dy = gaussian(103, t * C);
        Run a = run(cpu, cuSeqlens, C, u, k, dy);
        Run b = run(cpu, cuSeqlens, C, u, k, dy);
        Run one;
        try (Device single = CpuDevice.open(1)) {
            one = run(single, cuSeqlens, C, u, k, dy);
        }
        for (Run r : new Run[] {b, one}) {
            assertArrayEquals(a.y(), r.y());
            assertArrayEquals(a.du(), r.du());
            assertArrayEquals(a.dk(), r.dk());
        }
    }

    /** The fp64 reference device and the CPU agree, with du and dk accumulating onto random values. */
    @Test
    void referenceBackendAgreesWithTheCpuBackend() {
        int[] cuSeqlens = cu(1, 97, 130, 7);
        int t = cuSeqlens[cuSeqlens.length - 1];
        int l = 131;
        float[] u = gaussian(111, t * C);
        float[] k = gaussian(112, l * C);
        float[] dy = gaussian(113, t * C);
        float[] du0 = gaussian(114, t * C);
        float[] dk0 = gaussian(115, l * C);
        Run c = run(cpu, cuSeqlens, C, u, k, dy, du0, dk0);
        Run r = run(ref, cuSeqlens, C, u, k, dy, du0, dk0);
        double[][] want = {widen(r.y()), widen(r.du()), widen(r.dk())};
        float[][] got = {c.y(), c.du(), c.dk()};
        String[] names = {"y", "du", "dk"};
        for (int i = 0; i < 3; i++) {
            Check.close("causal conv " + names[i], want[i], got[i], 1e-4, 1e-5);
        }
        double[][] g = Reference.causalConvBackward(widen(dy), widen(u), widen(k), cuSeqlens, C);
        Check.close("reference dk accumulates", Check.plus(g[1], dk0), r.dk(), 1e-5, 1e-6);
    }

    @Test
    void badCallsNameTheArgument() {
        try (Tensor u = cpu.allocate(DType.F32, 10, 4); Tensor y = cpu.allocate(DType.F32, 10, 4);
             Tensor noK = cpu.allocate(DType.F32, 0, 4); Tensor wideK = cpu.allocate(DType.F32, 10, 3);
             Tensor csT = cpu.fromInts(new int[] {0, 6, 10}, 3); Tensor badCsT = cpu.fromInts(new int[] {0, 6, 9}, 3);
             Tensor k = cpu.allocate(DType.F32, 6, 4)) {
            Varlen badCs = Varlen.of(badCsT, new int[] {0, 6, 9});
            Varlen cs = Varlen.of(csT, new int[] {0, 6, 10});
            Backend be = cpu.backend();
            String m = assertThrows(IllegalArgumentException.class, () -> be.causalConvForward(y, u, noK, cs)).getMessage();
            assertTrue(m.contains("at least 1 row"), m);
            m = assertThrows(IllegalArgumentException.class, () -> be.causalConvForward(y, u, wideK, cs)).getMessage();
            assertTrue(m.contains("channels"), m);
            m = assertThrows(IllegalArgumentException.class, () -> be.causalConvForward(y, u, k, badCs)).getMessage();
            assertTrue(m.contains("cu_seqlens ends at 9"), m);
            m = assertThrows(IllegalArgumentException.class, () -> be.causalConvForward(u, u, k, cs)).getMessage();
            assertTrue(m.contains("must not overlap u"), m);
            m = assertThrows(IllegalArgumentException.class, () -> be.causalConvBackward(y, wideK, y, u, k, cs)).getMessage();
            assertTrue(m.contains("causal conv dk"), m);
        }
    }

    // ---- kernels shorter than the sequences (H3's shift SSM) ----

    static Stream<Arguments> shortKernels() {
        List<Arguments> out = new ArrayList<>();
        for (int l : new int[] {1, 2, 64}) {
            for (int[] c : new int[][] {cu(1), cu(97), cu(1025), cu(1, 97, 1025, 2)}) {
                out.add(Arguments.of(l, c));
            }
        }
        return out.stream();
    }

    /** Taps beyond L are zero: the same relative oracle as full-length kernels (64 taps take the FFT past 96 tokens). */
    @ParameterizedTest(name = "L={0} cu={1}")
    @MethodSource("shortKernels")
    void shortKernelMatchesOracle(int l, int[] cuSeqlens) {
        int t = cuSeqlens[cuSeqlens.length - 1];
        long seed = t * 37L + l;
        float[] u = gaussian(seed, t * C);
        float[] k = gaussian(seed + 1, l * C);
        float[] dy = gaussian(seed + 2, t * C);
        double[] y = Reference.causalConv(widen(u), widen(k), cuSeqlens, C);
        double[][] g = Reference.causalConvBackward(widen(dy), widen(u), widen(k), cuSeqlens, C);
        Run f = run(cpu, cuSeqlens, C, u, k, dy);
        Run n = naive(cuSeqlens, C, u, k, dy);
        assertOracle("y", y, f.y(), n.y(), 2);
        assertOracle("du", g[0], f.du(), n.du(), 3);
        assertOracle("dk", g[1], f.dk(), n.dk(), 3);
        Run r = run(ref, cuSeqlens, C, u, k, dy);
        Check.close("reference device y (read back as floats)", y, r.y(), 0, 1e-7);
    }

    /**
     * A kernel with no more taps than a sequence is the same convolution as that kernel padded with
     * zeros to the full length, on both paths: 64 taps over 1025 tokens (FFT) and 2 taps (direct)
     * give, within the FFT bound of {@link #fftConvolutionEqualsDirectConvolution}, what the
     * zero-padded kernel gives, and dk's rows beyond the taps stay untouched.
     */
    @ParameterizedTest
    @ValueSource(ints = {2, 64})
    void shortKernelEqualsZeroPaddedKernel(int l) {
        int len = 1025;
        float[] u = gaussian(121, len * C);
        float[] k = gaussian(122, l * C);
        float[] dy = gaussian(123, len * C);
        Run sh = run(cpu, cu(len), C, u, k, dy);
        Run padded = run(cpu, cu(len), C, u, Arrays.copyOf(k, len * C), dy);
        close("y", padded.y(), sh.y());
        close("du", padded.du(), sh.du());
        close("dk", Arrays.copyOf(padded.dk(), l * C), sh.dk());
    }

    /** The FFT (64 taps, 1025 tokens) and the direct sum (64 taps, 96 tokens) agree on the shared prefix. */
    @Test
    void shortKernelFftEqualsDirect() {
        int shortLen = 96;
        int longLen = 1025;
        int l = 64;
        float[] u = gaussian(131, longLen * C);
        float[] k = gaussian(132, l * C);
        float[] dy = gaussian(133, longLen * C);
        Arrays.fill(dy, shortLen * C, dy.length, 0f);
        Run direct = run(cpu, cu(shortLen), C, Arrays.copyOf(u, shortLen * C), k, Arrays.copyOf(dy, shortLen * C));
        Run fft = run(cpu, cu(longLen), C, u, k, dy);
        close("y", direct.y(), Arrays.copyOf(fft.y(), shortLen * C));
        close("du", Arrays.copyOf(direct.du(), longLen * C), fft.du());
        close("dk", direct.dk(), fft.dk());
    }
}
