package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Arrays;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.kindling.ops.cpu.CpuDevice;

/** Skeinformer's sketched attention against exact softmax attention, on the host kernel and through a backend. */
class SkeinTest {
    private static final int NH = 2;
    private static final int HS = 4;
    private static final int W = NH * HS;

    private static float[] random(long seed, int n, double scale) {
        SplittableRandom r = new SplittableRandom(seed);
        float[] a = new float[n];
        for (int i = 0; i < n; i++) {
            a[i] = (float) (r.nextGaussian() * scale);
        }
        return a;
    }

    /** Exact softmax attention (causal or not) of every sequence of cu, in doubles. */
    private static float[] exact(float[] q, float[] k, float[] v, int[] cu, boolean causal) {
        float[] out = new float[q.length];
        double scale = 1 / Math.sqrt(HS);
        for (int b = 0; b + 1 < cu.length; b++) {
            for (int h = 0; h < NH; h++) {
                for (int i = cu[b]; i < cu[b + 1]; i++) {
                    int end = causal ? i + 1 : cu[b + 1];
                    double[] p = new double[end - cu[b]];
                    double max = Double.NEGATIVE_INFINITY;
                    for (int j = cu[b]; j < end; j++) {
                        double s = 0;
                        for (int e = 0; e < HS; e++) {
                            s += (double) q[i * W + h * HS + e] * k[j * W + h * HS + e];
                        }
                        p[j - cu[b]] = s * scale;
                        max = Math.max(max, s * scale);
                    }
                    double sum = 0;
                    for (int j = 0; j < p.length; j++) {
                        p[j] = Math.exp(p[j] - max);
                        sum += p[j];
                    }
                    for (int e = 0; e < HS; e++) {
                        double o = 0;
                        for (int j = 0; j < p.length; j++) {
                            o += p[j] * v[(cu[b] + j) * W + h * HS + e];
                        }
                        out[i * W + h * HS + e] = (float) (o / sum);
                    }
                }
            }
        }
        return out;
    }

    private static float[] sketch(Skein s, float[] q, float[] k, float[] v, int[] cu, long seed) {
        double[] out = new double[q.length];
        s.forward(out, d(q), d(k), d(v), cu, seed);
        return f(out);
    }

    private static double[] d(float[] a) {
        double[] o = new double[a.length];
        for (int i = 0; i < a.length; i++) {
            o[i] = a[i];
        }
        return o;
    }

    private static float[] f(double[] a) {
        float[] o = new float[a.length];
        for (int i = 0; i < a.length; i++) {
            o[i] = (float) a[i];
        }
        return o;
    }

    private static double rmsError(float[] a, float[] b) {
        double s = 0;
        for (int i = 0; i < a.length; i++) {
            s += (a[i] - b[i]) * (double) (a[i] - b[i]);
        }
        return Math.sqrt(s / a.length);
    }

    @Test
    void samplingEveryColumnIsExactAttention() {
        int[] cu = {0, 5, 17, 18};
        float[] q = random(1, 18 * W, 1.5);
        float[] k = random(2, 18 * W, 1.5);
        float[] v = random(3, 18 * W, 1);
        for (boolean causal : new boolean[] {false, true}) {
            // 12 samples cover the longest sequence, and the causal tiles' prefixes too.
            float[] got = sketch(new Skein(NH, HS, 12, 3, causal, true), q, k, v, cu, 7);
            assertArrayEquals(exact(q, k, v, cu, causal), got, 1e-5f, "causal " + causal);
        }
    }

    @Test
    void pilotRowsAreExactAndTheOthersAreNot() {
        int n = 64;
        int[] cu = {0, n};
        float[] q = random(4, n * W, 1.5);
        float[] k = random(5, n * W, 1.5);
        float[] v = random(6, n * W, 1);
        Skein s = new Skein(NH, HS, 8, 6, false, true);
        long seed = 11;
        float[] got = sketch(s, q, k, v, cu, seed);
        float[] want = exact(q, k, v, cu, false);
        for (int h = 0; h < NH; h++) {
            int[] pilots = Skein.draw(uniform(n), 6, Seeds.derive(seed, h, 0, 0));
            boolean[] pilot = new boolean[n];
            for (int p : pilots) {
                pilot[p] = true;
            }
            int inexact = 0;
            for (int i = 0; i < n; i++) {
                float[] g = Arrays.copyOfRange(got, i * W + h * HS, i * W + h * HS + HS);
                float[] w = Arrays.copyOfRange(want, i * W + h * HS, i * W + h * HS + HS);
                if (pilot[i]) {
                    assertArrayEquals(w, g, 1e-5f, "pilot row " + i + " head " + h);
                } else if (rmsError(g, w) > 1e-3) {
                    inexact++;
                }
            }
            assertEquals(6, pilots.length);
            assertTrue(inexact > n / 2, "head " + h + ": only " + inexact + " sketched rows differ from exact attention");
        }
    }

    private static double[] uniform(int n) {
        double[] w = new double[n];
        Arrays.fill(w, 1);
        return w;
    }

    @Test
    void adaptiveNormalisationHasTheSmallerError() {
        // Scores near zero (small q, k) are where modelling the unsampled columns matters most: a
        // row normalised over its samples alone weighs them as if they were every column.
        int n = 256;
        int[] cu = {0, n};
        for (long seed = 0; seed < 3; seed++) {
            float[] q = random(10 + seed, n * W, 0.5);
            float[] k = random(20 + seed, n * W, 0.5);
            float[] v = random(30 + seed, n * W, 1);
            for (int i = 0; i < n * W; i++) {
                v[i] += 0.5f;
            }
            for (boolean causal : new boolean[] {false, true}) {
                float[] want = exact(q, k, v, cu, causal);
                double adaptive = rmsError(sketch(new Skein(NH, HS, 16, 16, causal, true), q, k, v, cu, seed), want);
                double plain = rmsError(sketch(new Skein(NH, HS, 16, 16, causal, false), q, k, v, cu, seed), want);
                assertTrue(adaptive < plain, "seed " + seed + " causal " + causal + ": adaptive " + adaptive + " vs " + plain);
            }
        }
    }

    @Test
    void causalRowsIgnoreLaterTokensAndDecodeAsTheFullForward() {
        int n = 53;
        float[] q = random(40, n * W, 1.5);
        float[] k = random(41, n * W, 1.5);
        float[] v = random(42, n * W, 1);
        Skein s = new Skein(NH, HS, 6, 0, true, true);
        float[] full = sketch(s, q, k, v, new int[] {0, n}, 9);
        // Changing the later half changes none of the first half's rows.
        float[] q2 = q.clone();
        float[] k2 = k.clone();
        float[] v2 = v.clone();
        for (int i = 30 * W; i < n * W; i++) {
            q2[i] += 1;
            k2[i] -= 2;
            v2[i] *= 3;
        }
        float[] changed = sketch(s, q2, k2, v2, new int[] {0, n}, 9);
        assertArrayEquals(Arrays.copyOf(full, 30 * W), Arrays.copyOf(changed, 30 * W), 0f);
        assertNotEquals(full[n * W - 1], changed[n * W - 1]);
        // Decoding in chunks of 1, 7 and the rest gives the full forward's rows.
        int[] bounds = {0, 1, 8, n};
        for (int c = 0; c + 1 < bounds.length; c++) {
            int start = bounds[c];
            int rows = bounds[c + 1] - start;
            double[] out = new double[rows * W];
            s.step(out, d(Arrays.copyOfRange(q, start * W, (start + rows) * W)), d(Arrays.copyOf(k, (start + rows) * W)),
                    d(Arrays.copyOf(v, (start + rows) * W)), start, rows, 9);
            assertArrayEquals(Arrays.copyOfRange(full, start * W, (start + rows) * W), f(out), 1e-6f, "chunk " + c);
        }
    }

    @Test
    void theBackendGradientsMatchFiniteDifferencesWithTheDrawsFixed() {
        int[] cu = {0, 9, 21};
        int t = 21;
        float[] q = random(50, t * W, 1);
        float[] k = random(51, t * W, 1);
        float[] v = random(52, t * W, 1);
        float[] g = random(53, t * W, 1);
        for (boolean causal : new boolean[] {false, true}) {
            Skein s = new Skein(NH, HS, 4, 2, causal, true);
            try (Device dev = CpuDevice.open(2)) {
                Varlen off = Varlen.upload(dev, cu);
                try (Tensor tq = dev.fromFloats(q, t, W); Tensor tk = dev.fromFloats(k, t, W); Tensor tv = dev.fromFloats(v, t, W);
                     Tensor to = dev.allocate(DType.F32, t, W); Tensor tg = dev.fromFloats(g, t, W);
                     Tensor dq = dev.allocate(DType.F32, t, W); Tensor dk = dev.allocate(DType.F32, t, W);
                     Tensor dv = dev.allocate(DType.F32, t, W); Tensor cuT = off.device()) {
                    dev.backend().skeinForward(to, tq, tk, tv, off, s, 3);
                    // The CPU's bidirectional kernel computes in float32, the host loops in doubles.
                    assertArrayEquals(sketch(s, q, k, v, cu, 3), to.toFloatArray(), causal ? 0f : 1e-6f);
                    dev.backend().fill(dq, 0.5f);
                    dev.backend().fill(dk, 0);
                    dev.backend().fill(dv, 0);
                    dev.backend().skeinBackward(dq, dk, dv, tg, tq, tk, tv, off, s, 3);
                    float[][] grads = {dq.toFloatArray(), dk.toFloatArray(), dv.toFloatArray()};
                    float[][] ins = {q, k, v};
                    int checked = 0;
                    int probes = 0;
                    for (int which = 0; which < 3; which++) {
                        for (int idx = 0; idx < t * W; idx += 5) {
                            probes++;
                            // A probe whose step moves the draws (the samples depend on q, k, v) shows
                            // as two step sizes disagreeing: the function is piecewise smooth, the
                            // gradient is that of the piece with the draws fixed.
                            double coarse = numeric(s, ins, which, idx, g, cu, 1e-2);
                            double fine = numeric(s, ins, which, idx, g, cu, 5e-3);
                            if (Math.abs(coarse - fine) > 1e-2 * (1 + Math.abs(fine))) {
                                continue;
                            }
                            checked++;
                            double want = fine + (which == 0 ? 0.5 : 0);
                            assertEquals(want, grads[which][idx], 2e-3 * (1 + Math.abs(want)),
                                    "causal " + causal + " operand " + which + " element " + idx);
                        }
                    }
                    assertTrue(checked > 0.9 * probes, "only " + checked + " of " + probes + " probes kept their draws");
                }
            }
        }
    }

    /** ∂(Σ g·out)/∂ ins[which][idx] by central differences in doubles of float inputs. */
    private static double numeric(Skein s, float[][] ins, int which, int idx, float[] g, int[] cu, double h) {
        float[] x = ins[which];
        float keep = x[idx];
        x[idx] = (float) (keep + h);
        double plus = dot(g, sketch(s, ins[0], ins[1], ins[2], cu, 3));
        x[idx] = (float) (keep - h);
        double minus = dot(g, sketch(s, ins[0], ins[1], ins[2], cu, 3));
        x[idx] = keep;
        return (plus - minus) / (2 * h);
    }

    private static double dot(float[] a, float[] b) {
        double s = 0;
        for (int i = 0; i < a.length; i++) {
            s += (double) a[i] * b[i];
        }
        return s;
    }

    /**
     * The CPU backend's float32 kernel against the double loops (its reference twin) at awkward
     * sizes: head dim 59, sequences of 97 and 1025 rows beside ones shorter than the sample and
     * the pilot, and one sequence alone (so three threads split each head's tiles into
     * segments), both normalisations. Same draws, so the two differ by float rounding only: within
     * 1e-5·(1 + |x|) forward and 2e-5·(1 + |x|) for the gradients, which start from nonzero
     * values (the backward accumulates).
     */
    @Test
    void theCpuKernelMatchesTheReferenceLoops() {
        int nh = 3;
        int hs = 59;
        int w = nh * hs;
        int t = 1150;
        float[] q = random(60, t * w, 1.2);
        float[] k = random(61, t * w, 1.2);
        float[] v = random(62, t * w, 1);
        float[] g = random(63, t * w, 1);
        float[] g0 = random(64, t * w, 0.5);
        for (int[] cu : new int[][] {{0, 97, 1122, 1125, 1126, t}, {0, t}}) {
            for (boolean adaptive : new boolean[] {true, false}) {
                Skein s = new Skein(nh, hs, 16, 7, false, adaptive);
                String what = Arrays.toString(cu) + " adaptive " + adaptive + " ";
                double[] out = new double[t * w];
                s.forward(out, d(q), d(k), d(v), cu, 5);
                double[][] grads = {d(g0), d(g0), d(g0)};
                s.backward(grads[0], grads[1], grads[2], d(g), d(q), d(k), d(v), cu, 5);
                try (Device dev = CpuDevice.open(3)) {
                    Varlen off = Varlen.upload(dev, cu);
                    try (Tensor tq = dev.fromFloats(q, t, w); Tensor tk = dev.fromFloats(k, t, w); Tensor tv = dev.fromFloats(v, t, w);
                         Tensor to = dev.allocate(DType.F32, t, w); Tensor tg = dev.fromFloats(g, t, w);
                         Tensor dq = dev.fromFloats(g0, t, w); Tensor dk = dev.fromFloats(g0, t, w);
                         Tensor dv = dev.fromFloats(g0, t, w); Tensor cuT = off.device()) {
                        dev.backend().skeinForward(to, tq, tk, tv, off, s, 5);
                        assertClose(out, to.toFloatArray(), 1e-5, what + "out");
                        dev.backend().skeinBackward(dq, dk, dv, tg, tq, tk, tv, off, s, 5);
                        Tensor[] got = {dq, dk, dv};
                        for (int which = 0; which < 3; which++) {
                            assertClose(grads[which], got[which].toFloatArray(), 2e-5, what + "d" + "qkv".charAt(which));
                        }
                    }
                }
            }
        }
    }

    private static void assertClose(double[] want, float[] got, double tol, String what) {
        for (int i = 0; i < want.length; i++) {
            assertEquals(want[i], got[i], tol * (1 + Math.abs(want[i])), what + " element " + i);
        }
    }

    /** The draw's heap selection picks what sorting every key would: the m largest, ties and zero weights by index. */
    @Test
    void theDrawIsTheTopOfTheFullSort() {
        SplittableRandom r = new SplittableRandom(70);
        for (int trial = 0; trial < 40; trial++) {
            int n = 1 + r.nextInt(300);
            int m = 1 + r.nextInt(n + 2);
            double[] w = new double[n];
            for (int j = 0; j < n; j++) {
                // Zeros (keys −∞, tied) and repeated weights beside distinct ones.
                int kind = r.nextInt(4);
                w[j] = kind == 0 ? 0 : kind == 1 ? 0.5 : r.nextDouble() * 3;
            }
            long seed = r.nextLong();
            double[] key = new double[n];
            Integer[] order = new Integer[n];
            for (int j = 0; j < n; j++) {
                double u = (Seeds.bits24(seed, j) + 0.5) / (1 << 24);
                key[j] = w[j] > 0 ? Math.log(u) / w[j] : Double.NEGATIVE_INFINITY;
                order[j] = j;
            }
            Arrays.sort(order, (a, b) -> key[a] != key[b] ? Double.compare(key[b], key[a]) : Integer.compare(a, b));
            int[] want = new int[Math.min(m, n)];
            for (int x = 0; x < want.length; x++) {
                want[x] = order[x];
            }
            Arrays.sort(want);
            assertArrayEquals(want, Skein.draw(w, m, seed), "n " + n + " m " + m);
        }
    }
}
