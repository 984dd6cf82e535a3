package org.kindling.models;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.RunConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.Synthetic;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.generate.Generator;
import org.kindling.models.generate.Sampling;
import org.kindling.models.io.Checkpoints;
import org.kindling.models.io.HfExport;
import org.kindling.models.io.LocalRunStorage;
import org.kindling.models.mixers.attention.AttentionSpec;
import org.kindling.models.mixers.attention.QkvSpec;
import org.kindling.models.nn.LinearSpec;
import org.kindling.models.nn.ModuleConv;
import org.kindling.models.nn.MultiplicativeLinear;
import org.kindling.models.nn.Param;
import org.kindling.models.nn.Params;
import org.kindling.models.nn.Workspace;
import org.kindling.models.train.Trainer;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;
import org.kindling.ops.cpu.CpuDevice;

/**
 * Scaling Transformers' sparse QKV ({@code qkv: multiplicative}): the multiplicative layer and
 * the convolution over (tokens, modules) alone, then inside attention and a model.
 */
class SparseQkvTest {
    private static final int VOCAB = 29;
    private static final int C = 16;
    private final ReferenceTensors ref = new ReferenceTensors();
    private final Device dev = ref.dev;

    @TempDir
    Path dir;

    @AfterEach
    void tearDown() throws Exception {
        ref.close();
    }

    private <T extends AutoCloseable> T keep(T t) {
        return ref.keep(t);
    }

    @Test
    void theMultiplicativeLayerRepresentsAPermutationExactly() {
        int d = 12;
        int s = 3;
        int m = d / s;
        int[] perm = shuffled(d, 5);
        try (Device cpu = CpuDevice.open(1)) {
            Params.Builder pb = new Params.Builder();
            try (MultiplicativeLinear lin = new MultiplicativeLinear(pb, cpu, new Workspace(), "mult", d, d, s, false, 0.1);
                 Params params = pb.build(cpu, 1)) {
                // Output j = (module j / M, unit j % M) reads input perm[j]: D picks the input's module, E its unit.
                float[] gate = new float[s * d];
                float[] e = new float[d * m];
                for (int j = 0; j < d; j++) {
                    int i = perm[j];
                    gate[(j / m) * d + i] = 1;
                    e[i * m + j % m] = 1;
                }
                lin.gate.value().copyFrom(gate);
                lin.weight.value().copyFrom(e);
                float[] xs = new float[5 * d];
                SplittableRandom r = new SplittableRandom(2);
                for (int i = 0; i < xs.length; i++) {
                    xs[i] = (float) r.nextGaussian();
                }
                try (Tensor x = cpu.allocate(DType.F32, 5, d).copyFrom(xs); Tensor y = cpu.allocate(DType.F32, 5, d)) {
                    lin.forward(y, x);
                    float[] got = y.toFloatArray();
                    float[] want = new float[xs.length];
                    for (int t = 0; t < 5; t++) {
                        for (int j = 0; j < d; j++) {
                            want[t * d + j] = xs[t * d + perm[j]];
                        }
                    }
                    assertArrayEquals(want, got, 0f);
                }
            }
        }
    }

    @Test
    void theMultiplicativeLayerHasSdPlusDSquaredOverSParameters() {
        int d = 24;
        for (int s : new int[] {1, 2, 4, 6}) {
            Params.Builder pb = new Params.Builder();
            try (MultiplicativeLinear lin = new MultiplicativeLinear(pb, dev, new Workspace(), "mult", d, d, s, false, 0.1)) {
                assertEquals((long) s * d + (long) d * d / s, pb.trainableCount(), "S = " + s);
                assertEquals(pb.trainableCount(), lin.parameters());
            }
        }
        assertThrows(IllegalArgumentException.class, () -> new MultiplicativeLinear(new Params.Builder(), dev, new Workspace(),
                "mult", d, d, 5, false, 0.1));
    }

    @Test
    void multiplicativeLayerGradients() {
        Params.Builder pb = new Params.Builder();
        MultiplicativeLinear lin = keep(new MultiplicativeLinear(pb, dev, new Workspace(), "mult", 6, 8, 2, true, 0.5));
        Params params = params(pb, 3);
        Tensor x = ref.input(4, 5, 6);
        Tensor y = keep(dev.allocate(DType.F32, 5, 8));
        check("multiplicative", params, x, y, () -> lin.forward(y, x), lin::backward);
    }

    @Test
    void moduleConvGradientsOverPackedSequences() {
        int[] cu = {0, 1, 8, 11};
        Params.Builder pb = new Params.Builder();
        ModuleConv conv = keep(new ModuleConv(pb, dev, new Workspace(), "conv", 6, 3, 3, 3, 0.5));
        Params params = params(pb, 5);
        Tensor x = ref.input(6, 11, 6);
        Tensor y = keep(dev.allocate(DType.F32, 11, 6));
        check("module conv", params, x, y, () -> conv.forward(y, x, cu), conv::backward);
    }

    /** The convolution against its definition: zero padding over modules, causal per sequence over tokens. */
    @Test
    void moduleConvIsTheCausalConvolutionOverTokensAndModulesOfEachSequence() {
        int s = 4;
        int m = 2;
        int kk = 3;
        int len = 3;
        int w = s * m;
        int[] cu = {0, 5, 18};
        Params.Builder pb = new Params.Builder();
        ModuleConv conv = keep(new ModuleConv(pb, dev, new Workspace(), "conv", w, s, kk, len, 0.5));
        params(pb, 7);
        double[] wt = conv.weight.value().toDoubleArray();
        double[] b = conv.bias.value().toDoubleArray();
        Tensor x = ref.input(8, 18, w);
        double[] xs = x.toDoubleArray();
        Tensor y = keep(dev.allocate(DType.F32, 18, w));
        conv.forward(y, x, cu);
        double[] got = y.toDoubleArray();
        for (int seq = 0; seq < 2; seq++) {
            for (int t = cu[seq]; t < cu[seq + 1]; t++) {
                for (int mod = 0; mod < s; mod++) {
                    for (int o = 0; o < m; o++) {
                        double want = b[o];
                        for (int l = 0; l < len; l++) {
                            int tok = t - (len - 1) + l;
                            for (int j = 0; j < kk; j++) {
                                int sm = mod + j - kk / 2;
                                if (tok < cu[seq] || sm < 0 || sm >= s) {
                                    continue;
                                }
                                for (int i = 0; i < m; i++) {
                                    want += xs[tok * w + sm * m + i] * wt[((l * kk + j) * m + i) * m + o];
                                }
                            }
                        }
                        assertEquals(want, got[t * w + mod * m + o], 1e-12, "token " + t + " module " + mod + " unit " + o);
                    }
                }
            }
        }
    }

    @Test
    void changingATokenChangesNoEarlierConvolutionOutput() {
        int[] cu = {0, 5, 18};
        Params.Builder pb = new Params.Builder();
        ModuleConv conv = keep(new ModuleConv(pb, dev, new Workspace(), "conv", 8, 4, 3, 3, 0.5));
        params(pb, 9);
        Tensor x = ref.input(10, 18, 8);
        Tensor y = keep(dev.allocate(DType.F32, 18, 8));
        conv.forward(y, x, cu);
        double[] before = y.toDoubleArray();
        for (int t : new int[] {0, 3, 5, 11, 17}) {
            double[] xs = x.toDoubleArray();
            double[] changed = xs.clone();
            for (int i = 0; i < 8; i++) {
                changed[t * 8 + i] += 1.5;
            }
            x.copyFrom(changed);
            conv.forward(y, x, cu);
            double[] after = y.toDoubleArray();
            x.copyFrom(xs);
            int seqEnd = t < 5 ? 5 : 18;
            for (int r = 0; r < 18; r++) {
                boolean reached = r >= t && r < seqEnd && r <= t + 2;
                for (int i = 0; i < 8; i++) {
                    if (reached) {
                        continue;
                    }
                    assertEquals(before[r * 8 + i], after[r * 8 + i], 0.0, "token " + t + " changed row " + r);
                }
            }
            assertNotEquals(before[t * 8], after[t * 8], "token " + t + " changed nothing at itself");
        }
    }

    /**
     * Two sequences of 5 and 13 tokens decoded token by token and in uneven chunks give the full
     * forward's rows, with a history of two tokens and with none (L = 1).
     */
    @Test
    void moduleConvDecodingEqualsTheFullForward() {
        for (int len : new int[] {3, 1}) {
            decodeLikeTheFullForward(len);
        }
    }

    private void decodeLikeTheFullForward(int len) {
        int w = 8;
        int[] cu = {0, 5, 18};
        Params.Builder pb = new Params.Builder();
        ModuleConv conv = keep(new ModuleConv(pb, dev, new Workspace(), "conv", w, 4, 3, len, 0.5));
        params(pb, 11);
        Tensor x = ref.input(12, 18, w);
        Tensor y = keep(dev.allocate(DType.F32, 18, w));
        conv.forward(y, x, cu);
        double[] full = y.toDoubleArray();
        double[] xs = x.toDoubleArray();
        int[][] chunkings = {{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, {2, 3, 1, 4, 3}, {13}};
        for (int[] chunks : chunkings) {
            try (ModuleConv.State st = conv.newState(2)) {
                int[] done = {0, 0};
                int[] lens = {5, 13};
                for (int c : chunks) {
                    int[] n = {Math.min(c, lens[0] - done[0]), Math.min(c, lens[1] - done[1])};
                    int[] stepCu = {0, n[0], n[0] + n[1]};
                    double[] in = new double[stepCu[2] * w];
                    for (int seq = 0; seq < 2; seq++) {
                        System.arraycopy(xs, (cu[seq] + done[seq]) * w, in, stepCu[seq] * w, n[seq] * w);
                    }
                    try (Tensor sx = dev.allocate(DType.F32, stepCu[2], w).copyFrom(in);
                         Tensor sy = dev.allocate(DType.F32, stepCu[2], w)) {
                        conv.step(sy, sx, stepCu, st);
                        double[] got = sy.toDoubleArray();
                        for (int seq = 0; seq < 2; seq++) {
                            for (int i = 0; i < n[seq] * w; i++) {
                                assertEquals(full[(cu[seq] + done[seq]) * w + i], got[stepCu[seq] * w + i], 1e-5,
                                        "L " + len + " " + Arrays.toString(chunks) + " sequence " + seq + " at " + done[seq]);
                            }
                        }
                    }
                    done[0] += n[0];
                    done[1] += n[1];
                }
                assertEquals((long) 2 * (len - 1) * w * Float.BYTES, st.bytes());
            }
        }
    }

    private static ModelConfig model(QkvSpec qkv) {
        return ModelConfig.gpt(VOCAB, C, 2, 2, 2, 1, 4, 0, 0.2, 1e-5).withPositions(ModelConfig.PosEmb.NONE, 0)
                .withMixers(Collections.nCopies(2, new AttentionSpec(2, 2, LinearSpec.DENSE, qkv)));
    }

    private static final QkvSpec SPARSE = new QkvSpec(true, 4, 3, 3);

    @Test
    void aModelDecodesItsTwoSequencesTokenByTokenAndInChunksLikeTheFullForward() {
        int[] a = tokens(1, 5);
        int[] b = tokens(2, 13);
        // Past a's end only b gets tokens, so some steps decode one sequence of the two.
        try (Device cpu = CpuDevice.open(2); Gpt model = new Gpt(model(SPARSE), cpu, 3)) {
            float[] fa = model.logits(TokenBatch.single(a)).toFloatArray();
            float[] fb = model.logits(TokenBatch.single(b)).toFloatArray();
            int[][] chunkings = {{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, {3, 1, 4, 5}};
            for (int[] chunks : chunkings) {
                try (DecodeSession s = model.newSession(2)) {
                    int da = 0;
                    int db = 0;
                    for (int c : chunks) {
                        int na = Math.min(c, a.length - da);
                        int nb = Math.min(c, b.length - db);
                        float[][] got = s.step(new int[][] {Arrays.copyOfRange(a, da, da + na), Arrays.copyOfRange(b, db, db + nb)});
                        // A step gives each sequence's logits after its last new token; a sequence without new tokens gets none.
                        if (na > 0) {
                            assertClose(fa, (da + na - 1) * VOCAB, got[0], VOCAB, "sequence a at " + da);
                        }
                        assertClose(fb, (db + nb - 1) * VOCAB, got[1], VOCAB, "sequence b at " + db);
                        da += na;
                        db += nb;
                    }
                    assertEquals(13, s.length(1));
                }
            }
            // Packed with another sequence, b gives what it gives alone.
            int[] both = new int[18];
            System.arraycopy(a, 0, both, 0, 5);
            System.arraycopy(b, 0, both, 5, 13);
            float[] packed = model.logits(new TokenBatch(both, new int[] {0, 5, 18})).toFloatArray();
            assertClose(fb, 0, Arrays.copyOfRange(packed, 5 * VOCAB, 18 * VOCAB), 13 * VOCAB, "packed b");
        }
    }

    @Test
    void changingATokenChangesNoEarlierOutputOfTheModel() {
        int[] seq = tokens(3, 20);
        try (Device cpu = CpuDevice.open(2); Gpt model = new Gpt(model(SPARSE), cpu, 3)) {
            float[] before = model.logits(TokenBatch.single(seq)).toFloatArray();
            int t = 9;
            int[] changed = seq.clone();
            changed[t] = (seq[t] + 1) % VOCAB;
            float[] after = model.logits(TokenBatch.single(changed)).toFloatArray();
            assertArrayEquals(Arrays.copyOf(before, t * VOCAB), Arrays.copyOf(after, t * VOCAB), 0f);
            assertNotEquals(Arrays.toString(Arrays.copyOfRange(before, t * VOCAB, (t + 1) * VOCAB)),
                    Arrays.toString(Arrays.copyOfRange(after, t * VOCAB, (t + 1) * VOCAB)));
        }
    }

    @Test
    void aTinyModelTrainsGeneratesResumesBitIdenticallyAndIsNotExportedToGpt2() {
        ModelConfig cfg = model(SPARSE);
        TrainConfig train = new TrainConfig(7, 3e-3, 3e-4, 2, 8, 0.1, 0.9, 0.95, 1e-8, 1.0, 1, 512, 5, 0, 2);
        List<Double> losses = new ArrayList<>();
        try (Device cpu = CpuDevice.open(2); Gpt model = new Gpt(cfg, cpu, train.seed()); Trainer t = new Trainer(model, train)) {
            DataSource d = data();
            for (int i = 0; i < 8; i++) {
                losses.add(t.step(d).loss());
            }
            assertTrue(losses.get(7) < losses.get(0), "loss did not fall: " + losses);
            Generator gen = new Generator(model);
            int[] prompt = {1, 2, 3};
            int[] greedy = gen.generate(prompt, 6, Sampling.greedy(), 0, -1);
            assertEquals(6, greedy.length);
            // Greedy decoding through the convolutions' state equals the argmax of the full model.
            int[] seq = Arrays.copyOf(prompt, 9);
            for (int i = 0; i < 6; i++) {
                float[] logits = model.logits(TokenBatch.single(Arrays.copyOf(seq, 3 + i))).toFloatArray();
                int best = 0;
                for (int v = 1; v < VOCAB; v++) {
                    if (logits[(2 + i) * VOCAB + v] > logits[(2 + i) * VOCAB + best]) {
                        best = v;
                    }
                }
                assertEquals(best, greedy[i], "token " + i);
                seq[3 + i] = best;
            }
        }
        // Resumed from a checkpoint at step 4, the run continues bit-identically (the config keeps the qkv keys).
        Checkpoints ckpt = new Checkpoints(new LocalRunStorage(dir.resolve("run")));
        float[] straightWeights;
        try (Device cpu = CpuDevice.open(2); Gpt model = new Gpt(cfg, cpu, train.seed()); Trainer t = new Trainer(model, train)) {
            DataSource d = data();
            for (int i = 0; i < 8; i++) {
                t.step(d);
                if (i == 3) {
                    ckpt.save(t, new RunConfig(cfg, train), 2, d.position());
                }
            }
            straightWeights = model.params().values().toFloatArray();
        }
        try (Device cpu = CpuDevice.open(2); Gpt model = new Gpt(cfg, cpu, train.seed()); Trainer t = new Trainer(model, train)) {
            Checkpoints.State state = ckpt.restore(ckpt.latest().orElseThrow(), t);
            DataSource d = data();
            d.seek(state.dataPosition());
            List<Double> resumed = new ArrayList<>();
            for (int i = 4; i < 8; i++) {
                resumed.add(t.step(d).loss());
            }
            assertEquals(losses.subList(4, 8), resumed);
            assertArrayEquals(straightWeights, model.params().values().toFloatArray());
        }
        // Under bf16 the rest of the model takes bf16 GEMM operands; the sparse QKV layers stay fp32 and it still learns.
        TrainConfig bf16 = train.withPrecision(org.kindling.models.nn.Precision.BF16);
        try (Device cpu = CpuDevice.open(2); Gpt model = new Gpt(cfg, cpu, bf16.seed()); Trainer t = new Trainer(model, bf16)) {
            DataSource d = data();
            List<Double> mixed = new ArrayList<>();
            for (int i = 0; i < 8; i++) {
                mixed.add(t.step(d).loss());
            }
            assertTrue(mixed.get(7) < mixed.get(0), "bf16 loss did not fall: " + mixed);
            assertEquals(losses.get(7), mixed.get(7), 0.05, "bf16 strays from fp32");
        }
        ModelConfig learned = ModelConfig.gpt(VOCAB, C, 1, 2, 2, 32, 4, 0, 0.2, 1e-5)
                .withMixers(List.of(new AttentionSpec(2, 2, LinearSpec.DENSE, SPARSE)));
        try (Device cpu = CpuDevice.open(1); Gpt model = new Gpt(learned, cpu, 1)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> HfExport.write(model, 0, dir));
            assertTrue(e.getMessage().contains("qkv: multiplicative"), e.getMessage());
        }
    }

    @Test
    void qkvKeysAreReadRoundTripAndAreCheckedNamingTheKey() {
        String base = "vocab: 10\nd_model: 16\nn_layer: 2\nn_head: 2\nmax_seq: 16\n";
        RunConfig dflt = RunConfig.parse(base + "mixer: {type: attention, qkv: multiplicative}\n", "m.yaml");
        assertEquals(new QkvSpec(true, 2, 3, 3), ((AttentionSpec) dflt.model().mixers().get(0)).qkv(), "S defaults to the heads");
        RunConfig set = RunConfig.parse(base + "mixer: {type: attention, qkv: multiplicative, qkv_modules: 4, qkv_kernel: 1,"
                + " qkv_length_kernel: 2}\n", "m.yaml");
        assertEquals(new QkvSpec(true, 4, 1, 2), ((AttentionSpec) set.model().mixers().get(0)).qkv());
        assertEquals(set, RunConfig.fromMap(set.toMap(), "resolved"));
        RunConfig dense = RunConfig.parse(base + "mixer: attention\n", "m.yaml");
        assertEquals(QkvSpec.DENSE, ((AttentionSpec) dense.model().mixers().get(0)).qkv());
        assertTrue(!dense.toMap().toString().contains("qkv"), "a dense config writes no qkv keys");
        try (Device cpu = CpuDevice.open(1); Gpt model = new Gpt(set.model(), cpu, 1)) {
            assertEquals(Gpt.parameterCounts(set.model()).total(), model.params().count());
            Param gate = model.params().get("h.0.attn.qkv_mult.gate");
            assertEquals(4 * 16, gate.value().numel());
        }
        String[][] bad = {
            {"qkv: sparse", "mixer.qkv"},
            {"qkv: multiplicative, qkv_modules: 3", "qkv_modules"},
            {"qkv: multiplicative, qkv_kernel: 2", "qkv_kernel"},
            {"qkv: multiplicative, qkv_length_kernel: 0", "qkv_length_kernel"},
            {"qkv_kernel: 3", "qkv_kernel"},
            {"qkv: multiplicative, linear: butterfly", "mixer.qkv"},
            {"qkv: multiplicative, kv_heads: 1", "kv_heads"},
        };
        for (String[] c : bad) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> RunConfig.parse(base + "mixer: {type: attention, " + c[0] + "}\n", "m.yaml"), c[0]);
            assertTrue(e.getMessage().contains(c[1]), c[0] + ": " + e.getMessage());
        }
    }

    private static DataSource data() {
        return Synthetic.source(Synthetic.associativeRecall(VOCAB - 1, 24, 64, 5), 8);
    }

    private static void assertClose(float[] want, int offset, float[] got, int n, String what) {
        for (int i = 0; i < n; i++) {
            float w = want[offset + i];
            assertEquals(w, got[i], 2e-4f * (1 + Math.abs(w)), what + " logit " + i);
        }
    }

    private static int[] tokens(long seed, int n) {
        SplittableRandom r = new SplittableRandom(seed);
        int[] t = new int[n];
        for (int i = 0; i < n; i++) {
            t[i] = r.nextInt(VOCAB);
        }
        return t;
    }

    private static int[] shuffled(int n, long seed) {
        int[] p = new int[n];
        for (int i = 0; i < n; i++) {
            p[i] = i;
        }
        SplittableRandom r = new SplittableRandom(seed);
        for (int i = n - 1; i > 0; i--) {
            int j = r.nextInt(i + 1);
            int tmp = p[i];
            p[i] = p[j];
            p[j] = tmp;
        }
        return p;
    }

    private Params params(Params.Builder pb, long seed) {
        return ref.params(pb, seed, 0.7);
    }

    private void check(String what, Params params, Tensor x, Tensor y, Runnable forward,
                       java.util.function.BiConsumer<Tensor, Tensor> backward) {
        ref.check(what, params, x, y, forward, backward);
    }
}
