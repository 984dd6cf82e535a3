package org.kindling.models.mixers.linear;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.kindling.models.config.ConfigReader;
import org.kindling.models.config.LayerDefaults;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.mixers.Mixers;
import org.kindling.models.mixers.linear.KernelizedSpec.Kernel;
import org.kindling.models.nn.Init;
import org.kindling.models.nn.LayerContext;
import org.kindling.models.nn.Params;
import org.kindling.models.nn.Seqs;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Seeds;
import org.kindling.ops.Tensor;
import org.kindling.ops.cpu.CpuDevice;
import org.kindling.ops.reference.ReferenceDevice;

/**
 * Learned-kernel attention's features estimate their kernels' closed forms with errors falling
 * like 1/√M, are seeded per (seed, layer, head), work in the chunked linear-attention core as in
 * its quadratic form, and its spec reads and writes its keys.
 */
class KernelizedTest {
    private Device dev;
    private final List<AutoCloseable> open = new ArrayList<>();

    @BeforeEach
    void setUp() {
        dev = ReferenceDevice.open();
    }

    @AfterEach
    void tearDown() throws Exception {
        for (int i = open.size() - 1; i >= 0; i--) {
            open.get(i).close();
        }
        dev.close();
    }

    private <T extends AutoCloseable> T keep(T t) {
        open.add(t);
        return t;
    }

    private record Built(SpectralFeatures features, Params params) implements AutoCloseable {
        @Override
        public void close() {
            features.close();
            params.close();
        }
    }

    /** The feature map of layer {@code layer} alone, with model seed {@code seed}; the caller closes it. */
    private static Built build(Device d, int heads, int headDim, Kernel kernel, int m, int comps, long seed, int layer) {
        Params.Builder pb = new Params.Builder();
        SpectralFeatures f = new SpectralFeatures(new LayerContext(pb, d, "mixer", heads * headDim, layer, 2, 0.3, seed),
                heads, headDim, kernel, m, comps);
        return new Built(f, pb.build(d, seed));
    }

    /** The same on the reference device, closed after the test. */
    private Built features(int heads, int headDim, Kernel kernel, int m, int comps, long seed, int layer) {
        Built b = build(dev, heads, headDim, kernel, m, comps, seed, layer);
        keep(b.features());
        keep(b.params());
        return b;
    }

    private static double[] gaussian(long seed, int n, double std) {
        SplittableRandom r = new SplittableRandom(seed);
        double[] v = new double[n];
        for (int i = 0; i < n; i++) {
            v[i] = Init.gaussian(r) * std;
        }
        return v;
    }

    /** φ(x) [T, NH·F] of x [T, NH·HS]. */
    private double[] map(SpectralFeatures f, double[] x, int t, int heads, int headDim) {
        try (Tensor tx = dev.allocate(DType.F32, t, heads * headDim).copyFrom(x);
             Tensor out = dev.allocate(DType.F32, t, heads * f.features())) {
            f.forward(out, tx, false);
            return out.toDoubleArray();
        }
    }

    /**
     * The root-mean-square error over T pairs (x_t, y_t) and both heads of the estimate φ(x)·φ(y)
     * (less RKS's shift 2) against {@code kernel}(δ), δ = (x − y)·HS^(−1/4) per head, the scale
     * the map applies.
     */
    private double error(Built b, Kernel kernel, int heads, int headDim, java.util.function.BiFunction<Integer, double[], Double> exact) {
        int t = 64;
        double[] x = gaussian(1, t * heads * headDim, 0.6);
        double[] y = gaussian(2, t * heads * headDim, 0.6);
        double[] px = map(b.features(), x, t, heads, headDim);
        double[] py = map(b.features(), y, t, heads, headDim);
        int f = b.features().features();
        double s = Math.pow(headDim, -0.25);
        double sq = 0;
        for (int r = 0; r < t; r++) {
            for (int h = 0; h < heads; h++) {
                double est = 0;
                for (int i = 0; i < f; i++) {
                    est += px[(r * heads + h) * f + i] * py[(r * heads + h) * f + i];
                }
                if (!kernel.positive) {
                    est -= 2;
                }
                double[] delta = new double[headDim];
                for (int j = 0; j < headDim; j++) {
                    int at = (r * heads + h) * headDim + j;
                    delta[j] = kernel.positive ? s * s * x[at] * y[at] : (x[at] - y[at]) * s;
                }
                double diff = est - exact.apply(h, delta);
                sq += diff * diff;
            }
        }
        return Math.sqrt(sq / (t * heads));
    }

    @Test
    void rksApproachesTheGaussianKernelAsOneOverRootM() {
        // exp(−|δ|²/2): the Gaussian kernel whose spectral distribution is N(0, I).
        double[] err = new double[3];
        int[] ms = {16, 256, 4096};
        for (int i = 0; i < ms.length; i++) {
            Built b = features(2, 4, Kernel.RKS, ms[i], 1, 7, 0);
            err[i] = error(b, Kernel.RKS, 2, 4, (h, d) -> Math.exp(-0.5 * dot(d, d)));
        }
        // The Monte Carlo error of a mean of M bounded terms: √M·error stays within a small band.
        for (int i = 0; i < ms.length; i++) {
            double scaled = err[i] * Math.sqrt(ms[i]);
            assertTrue(scaled > 0.1 && scaled < 1.5, "√M·error at M = " + ms[i] + " is " + scaled + " (errors " + java.util.Arrays.toString(err) + ")");
        }
        assertTrue(err[2] < err[1] && err[1] < err[0], "error falls with M: " + java.util.Arrays.toString(err));
    }

    @Test
    void prfApproachesTheSoftmaxKernel() {
        // exp(q·k), here with the map's scaling: exp(x·y/√HS); delta carries that product per coordinate.
        double[] err = new double[3];
        int[] ms = {16, 256, 4096};
        for (int i = 0; i < ms.length; i++) {
            Built b = features(2, 4, Kernel.PRF, ms[i], 1, 7, 0);
            err[i] = error(b, Kernel.PRF, 2, 4, (h, d) -> Math.exp(java.util.Arrays.stream(d).sum()));
        }
        assertTrue(err[2] < err[1] && err[1] < err[0], "error falls with M: " + java.util.Arrays.toString(err));
        assertTrue(err[2] * Math.sqrt(4096) < 4, "√M·error at M = 4096: " + err[2] * 64);
    }

    @Test
    void learnedMixtureApproachesItsClosedForm() {
        int heads = 2;
        int hs = 4;
        int comps = 2;
        double[] mu = gaussian(11, heads * comps * hs, 0.8);
        double[] logVar = gaussian(12, heads * comps * hs, 0.5);
        double[] mix = gaussian(13, heads * comps, 1.0);
        double[] err = new double[3];
        int[] ms = {16, 256, 4096};
        for (int i = 0; i < ms.length; i++) {
            Built b = features(heads, hs, Kernel.GMM_RKS, ms[i], comps, 7, 1);
            b.params().get("mixer.mu").value().copyFrom(mu);
            b.params().get("mixer.log_var").value().copyFrom(logVar);
            b.params().get("mixer.mix").value().copyFrom(mix);
            // k(δ) = Σ_c π_c·exp(−½δᵀΣ_cδ)·cos(μ_cᵀδ), Σ_c = diag(exp(σ_c)), π = softmax(mix) per head.
            err[i] = error(b, Kernel.GMM_RKS, heads, hs, (h, d) -> {
                double z = 0;
                double[] e = new double[comps];
                for (int c = 0; c < comps; c++) {
                    e[c] = Math.exp(mix[h * comps + c]);
                    z += e[c];
                }
                double k = 0;
                for (int c = 0; c < comps; c++) {
                    double quad = 0;
                    double phase = 0;
                    for (int j = 0; j < hs; j++) {
                        int p = (h * comps + c) * hs + j;
                        quad += Math.exp(logVar[p]) * d[j] * d[j];
                        phase += mu[p] * d[j];
                    }
                    k += e[c] / z * Math.exp(-0.5 * quad) * Math.cos(phase);
                }
                return k;
            });
        }
        assertTrue(err[2] < err[1] && err[1] < err[0], "error falls with M: " + java.util.Arrays.toString(err));
        assertTrue(err[2] * Math.sqrt(4096) < 1.5, "√M·error at M = 4096: " + err[2] * 64 + " " + java.util.Arrays.toString(err));
    }

    @Test
    void fastFoodRksApproachesTheGaussianKernelAsOneOverRootMAtInitialisation() {
        // HS = 6 pads to D = 8: the padded coordinates are zero in x and in δ, so the kernel is the HS-dimensional one.
        double[] err = new double[3];
        int[] ms = {16, 256, 4096};
        for (int i = 0; i < ms.length; i++) {
            Built b = features(2, 6, Kernel.FASTFOOD_RKS, ms[i], 1, 7, 0);
            err[i] = error(b, Kernel.FASTFOOD_RKS, 2, 6, (h, d) -> Math.exp(-0.5 * dot(d, d)));
        }
        for (int i = 0; i < ms.length; i++) {
            double scaled = err[i] * Math.sqrt(ms[i]);
            assertTrue(scaled > 0.05 && scaled < 1.5, "√M·error at M = " + ms[i] + " is " + scaled + " (errors " + java.util.Arrays.toString(err) + ")");
        }
        assertTrue(err[2] < err[1] && err[1] < err[0], "error falls with M: " + java.util.Arrays.toString(err));
    }

    @Test
    void fastFoodPrfApproachesTheSoftmaxKernelAtInitialisation() {
        double[] err = new double[3];
        int[] ms = {16, 256, 4096};
        for (int i = 0; i < ms.length; i++) {
            Built b = features(2, 4, Kernel.FASTFOOD_PRF, ms[i], 1, 7, 0);
            err[i] = error(b, Kernel.FASTFOOD_PRF, 2, 4, (h, d) -> Math.exp(java.util.Arrays.stream(d).sum()));
        }
        assertTrue(err[2] < err[1] && err[1] < err[0], "error falls with M: " + java.util.Arrays.toString(err));
        assertTrue(err[2] * Math.sqrt(4096) < 4, "√M·error at M = 4096: " + err[2] * 64);
    }

    /**
     * The FastFood frequencies are V = (1/√D)·S·H·G·Π·H·B: rebuilt here densely in double from the
     * stored G, S and basis P = Π·H·B (whose entries are ±1 and whose columns are orthogonal, as
     * Π·H·B's are), the map's PRF features match exp(ωx − |x|²/2)/√M row for row, also after G and
     * S move away from their draw.
     */
    @Test
    void fastFoodFeaturesAreTheDenseProduct() {
        int heads = 2;
        int hs = 3;
        int d = 4;
        int m = 6;
        int r = 8;
        Built b = features(heads, hs, Kernel.FASTFOOD_PRF, m, 1, 13, 2);
        double[] basis = b.params().get("mixer.fastfood_basis").value().toDoubleArray();
        for (int h = 0; h < heads; h++) {
            for (int blk = 0; blk < r / d; blk++) {
                for (int i = 0; i < hs; i++) {
                    for (int j = 0; j < hs; j++) {
                        double s = 0;
                        for (int row = 0; row < d; row++) {
                            double p = basis[((h * r) + blk * d + row) * hs + i];
                            assertEquals(1.0, Math.abs(p), 0.0);
                            s += p * basis[((h * r) + blk * d + row) * hs + j];
                        }
                        assertEquals(i == j ? d : 0, s, 1e-12, "columns of Π·H·B are orthogonal with norm √D");
                    }
                }
            }
        }
        double[] g = gaussian(41, heads * r, 1.0);
        double[] sc = gaussian(42, heads * r, 0.5);
        b.params().get("mixer.fastfood_g").value().copyFrom(g);
        b.params().get("mixer.fastfood_s").value().copyFrom(sc);
        int t = 5;
        double[] x = gaussian(43, t * heads * hs, 0.8);
        double[] phi = map(b.features(), x, t, heads, hs);
        double scale = Math.pow(hs, -0.25);
        for (int h = 0; h < heads; h++) {
            double[][] omega = new double[r][hs];
            for (int blk = 0; blk < r / d; blk++) {
                for (int row = 0; row < d; row++) {
                    for (int j = 0; j < hs; j++) {
                        // (H·G·P)[row, j] = Σ_i H[row, i]·G_i·P[i, j]
                        double v = 0;
                        for (int i = 0; i < d; i++) {
                            int at = h * r + blk * d + i;
                            v += (Integer.bitCount(row & i) % 2 == 0 ? 1 : -1) * g[at] * basis[at * hs + j];
                        }
                        omega[blk * d + row][j] = sc[h * r + blk * d + row] * v / Math.sqrt(d);
                    }
                }
            }
            for (int row = 0; row < t; row++) {
                double norm = 0;
                for (int j = 0; j < hs; j++) {
                    double xs = x[(row * heads + h) * hs + j] * scale;
                    norm += xs * xs;
                }
                for (int i = 0; i < m; i++) {
                    double dotp = 0;
                    for (int j = 0; j < hs; j++) {
                        dotp += omega[i][j] * x[(row * heads + h) * hs + j] * scale;
                    }
                    double want = Math.exp(dotp - norm / 2) / Math.sqrt(m);
                    assertEquals(want, phi[(row * heads + h) * m + i], 1e-5 * Math.max(1, want), "head " + h + " token " + row + " feature " + i);
                }
            }
        }
    }

    @Test
    void generatorStartsAtTheFixedKernel() {
        // W₂ = 0, b₂ = 0 at the start: ω = ε, the same noise the fixed kernels use, so the features are theirs exactly.
        int t = 9;
        double[] x = gaussian(51, t * 2 * 4, 0.7);
        for (Kernel[] pair : new Kernel[][] {{Kernel.GENERATOR_RKS, Kernel.RKS}, {Kernel.GENERATOR_PRF, Kernel.PRF}}) {
            Built gen = features(2, 4, pair[0], 5, 1, 17, 3);
            Built fixed = features(2, 4, pair[1], 5, 1, 17, 3);
            assertArrayEquals(map(fixed.features(), x, t, 2, 4), map(gen.features(), x, t, 2, 4), 0.0, pair[0].key());
            gen.params().get("mixer.generator_w2").value().copyFrom(gaussian(52, 2 * 4 * 4, 0.5));
            assertTrue(map(fixed.features(), x, t, 2, 4)[0] != map(gen.features(), x, t, 2, 4)[0], "W₂ moves the frequencies");
        }
    }

    private static double dot(double[] a, double[] b) {
        double s = 0;
        for (int i = 0; i < a.length; i++) {
            s += a[i] * b[i];
        }
        return s;
    }

    @Test
    void noiseIsSeededPerLayerAndHead() {
        int k = 2 * 3;
        Built b = features(2, 4, Kernel.GMM_PRF, 3, 2, 21, 5);
        double[] eps = b.params().get("mixer.epsilon").value().toDoubleArray();
        for (int h = 0; h < 2; h++) {
            SplittableRandom r = new SplittableRandom(Seeds.derive(21, 5, h));
            for (int i = 0; i < k * 4; i++) {
                assertEquals((float) Init.gaussian(r), eps[h * k * 4 + i], 0.0, "head " + h + " element " + i);
            }
        }
        assertEquals(0, b.params().list().stream().filter(p -> p.name().equals("mixer.epsilon")).count(),
                "epsilon is frozen: no trainable parameter");
        Built again = features(2, 4, Kernel.GMM_PRF, 3, 2, 21, 5);
        assertArrayEquals(eps, again.params().get("mixer.epsilon").value().toDoubleArray(), 0.0);
        Built other = features(2, 4, Kernel.GMM_PRF, 3, 2, 21, 6);
        assertTrue(eps[0] != other.params().get("mixer.epsilon").value().toDoubleArray()[0], "another layer draws other noise");
    }

    /**
     * On the CPU, whose core runs in chunks of 64 tokens with the state carried between them, the
     * mixer's attention over RKS and PRF features equals the quadratic
     * masked form Σ_{j≤t} (φ_t·φ_j) v_j / (Σ_{j≤t} φ_t·φ_j + eps) on the same features.
     */
    @Test
    void chunkedCausalFormEqualsTheQuadraticMaskedForm() {
        try (Device cpu = CpuDevice.open(2)) {
            for (Kernel kernel : Kernel.values()) {
                int heads = 2;
                int hs = 4;
                int[] cu = {0, 150, 220};
                int t = cu[2];
                Built b = build(cpu, heads, hs, kernel, 5, kernel.mixture ? 2 : 1, 3, 0);
                int f = b.features().features();
                double[] q = gaussian(31, t * heads * hs, 0.7);
                double[] k = gaussian(32, t * heads * hs, 0.7);
                double[] v = gaussian(33, t * heads * hs, 1.0);
                TokenBatch batch = new TokenBatch(new int[t], cu);
                try (b; Tensor tq = cpu.allocate(DType.F32, t, heads * hs).copyFrom(q);
                     Tensor tk = cpu.allocate(DType.F32, t, heads * hs).copyFrom(k);
                     Tensor tv = cpu.allocate(DType.F32, t, heads * hs).copyFrom(v);
                     Tensor fq = cpu.allocate(DType.F32, t, heads * f);
                     Tensor fk = cpu.allocate(DType.F32, t, heads * f);
                     Tensor out = cpu.allocate(DType.F32, t, heads * hs);
                     Tensor cuT = cpu.fromInts(cu, cu.length);
                     Tensor pos = cpu.fromInts(batch.positions(), t)) {
                    b.features().forward(fq, tq, true);
                    b.features().forward(fk, tk, false);
                    Seqs seqs = new Seqs(cuT, pos, cu);
                    cpu.backend().linearAttentionForward(out, fq, fk, tv, seqs.varlen(), heads, 1e-6f);
                    double[] pq = fq.toDoubleArray();
                    double[] pk = fk.toDoubleArray();
                    double[] got = out.toDoubleArray();
                    double worst = 0;
                    for (int s = 0; s + 1 < cu.length; s++) {
                        for (int r = cu[s]; r < cu[s + 1]; r++) {
                            for (int h = 0; h < heads; h++) {
                                double den = 1e-6;
                                double[] num = new double[hs];
                                for (int j = cu[s]; j <= r; j++) {
                                    double w = 0;
                                    for (int i = 0; i < f; i++) {
                                        w += pq[(r * heads + h) * f + i] * pk[(j * heads + h) * f + i];
                                    }
                                    den += w;
                                    for (int d = 0; d < hs; d++) {
                                        num[d] += w * v[(j * heads + h) * hs + d];
                                    }
                                }
                                for (int d = 0; d < hs; d++) {
                                    worst = Math.max(worst, Math.abs(num[d] / den - got[(r * heads + h) * hs + d]));
                                }
                            }
                        }
                    }
                    assertTrue(worst < 1e-4, kernel.key() + ": max |chunked − quadratic| = " + worst);
                }
            }
        }
    }

    @Test
    void specReadsAndWritesItsKeys() {
        LayerDefaults d = new LayerDefaults(64, 4, null, 4);
        // HS = 16: round(16·ln 16) = 44 features.
        assertEquals(new KernelizedSpec(4, Kernel.GMM_RKS, 44, 2, 1e-6), Mixers.named("kernelized", d));
        for (Kernel kernel : Kernel.values()) {
            Map<String, Object> m = ConfigReader.ordered();
            m.put("type", "kernelized");
            m.put("kernel", kernel.key());
            m.put("features", 8);
            KernelizedSpec spec = (KernelizedSpec) Mixers.read(new ConfigReader("x.yaml", "mixer", m), d);
            assertEquals(kernel.mixture ? 2 : 1, spec.components());
            assertEquals(spec, Mixers.read(new ConfigReader("x.yaml", "mixer", spec.toMap()), d), "toMap reads back");
        }
        assertEquals("model.yaml: mixer[1].kernel is \"gauss\"; known kernels: gmm-rks, gmm-prf, rks, prf, "
                        + "fastfood-rks, fastfood-prf, generator-rks, generator-prf",
                bad(Map.of("kernel", "gauss")).getMessage());
        assertTrue(bad(Map.of("kernel", "rks", "components", 2)).getMessage()
                .startsWith("model.yaml: mixer[1].components applies to the gmm kernels only"));
        assertEquals("model.yaml: mixer[1].components applies to the gmm kernels only; kernel fastfood-rks has no mixture",
                bad(Map.of("kernel", "fastfood-rks", "components", 2)).getMessage());
        assertEquals("model.yaml: mixer[1].components must be at least 1, got 0", bad(Map.of("components", 0)).getMessage());
        assertEquals("model.yaml: mixer[1].features must be at least 1, got 0", bad(Map.of("features", 0)).getMessage());
    }

    private static IllegalArgumentException bad(Map<String, Object> keys) {
        Map<String, Object> m = ConfigReader.ordered();
        m.put("type", "kernelized");
        m.putAll(keys);
        return assertThrows(IllegalArgumentException.class,
                () -> Mixers.read(new ConfigReader("model.yaml", "mixer[1]", m), new LayerDefaults(12, 3, null, 4)));
    }
}
