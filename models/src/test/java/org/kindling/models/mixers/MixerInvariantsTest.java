package org.kindling.models.mixers;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.Stream;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;
import org.kindling.models.DecodeSession;
import org.kindling.models.Gpt;
import org.kindling.models.config.LayerDefaults;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.RunConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.Synthetic;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.io.Checkpoints;
import org.kindling.models.io.LocalRunStorage;
import org.kindling.models.train.Trainer;
import org.kindling.ops.Device;
import org.kindling.ops.cpu.CpuDevice;

/**
 * What every registered token mixer must do inside a model, checked for each type of the
 * registry (a new mixer is covered by registering it): recurrent decoding reproduces the full
 * forward, a batch of sequences decodes as each alone, packed sequences do not see each other, and
 * training resumes bit-identically from a checkpoint.
 */
class MixerInvariantsTest {
    private static final int VOCAB = 29;
    private static final int C = 16;

    @TempDir
    Path dir;

    static Stream<String> types() {
        return Mixers.types().stream();
    }

    /** Two layers of the mixer (with its defaults), no position table, so order comes from the mixer alone. */
    static ModelConfig model(String type) {
        MixerSpec spec = Mixers.named(type, new LayerDefaults(C, 2, 2, 4));
        return ModelConfig.gpt(VOCAB, C, 2, 2, 2, 1, 4, 0, 0.2, 1e-5).withPositions(ModelConfig.PosEmb.NONE, 0)
                .withMixers(Collections.nCopies(2, spec));
    }

    private static int[] tokens(long seed, int n) {
        SplittableRandom r = new SplittableRandom(seed);
        int[] t = new int[n];
        for (int i = 0; i < n; i++) {
            t[i] = r.nextInt(VOCAB);
        }
        return t;
    }

    private static void assertClose(float[] want, int offset, float[] got, int gotOffset, int n, String what) {
        for (int i = 0; i < n; i++) {
            float w = want[offset + i];
            assertEquals(w, got[gotOffset + i], 2e-4f * (1 + Math.abs(w)), what + " logit " + i);
        }
    }

    @ParameterizedTest
    @MethodSource("types")
    void decodingReproducesTheFullForward(String type) {
        int[] seq = tokens(1, 97);
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(model(type), dev, 3)) {
            float[] full = model.logits(TokenBatch.single(seq)).toFloatArray();
            try (DecodeSession s = model.newSession(1)) {
                float[] pre = s.stepAll(java.util.Arrays.copyOf(seq, 40));
                assertClose(full, 0, pre, 0, 40 * VOCAB, type + " prefill");
                for (int i = 40; i < seq.length; i++) {
                    assertClose(full, i * VOCAB, s.stepAll(new int[] {seq[i]}), 0, VOCAB, type + " token " + i);
                }
            }
        }
    }

    /** Pixelfly attention projections and butterfly MLPs decode like the full forward too. */
    @org.junit.jupiter.api.Test
    void structuredProjectionsDecodeLikeTheFullForward() {
        org.kindling.models.nn.LinearSpec fly = new org.kindling.models.nn.LinearSpec(org.kindling.models.nn.LinearSpec.Kind.PIXELFLY, 4, 2, 1, 2, true);
        org.kindling.models.nn.LinearSpec bf = new org.kindling.models.nn.LinearSpec(org.kindling.models.nn.LinearSpec.Kind.BUTTERFLY, 32, 16, 2, 32, false);
        ModelConfig cfg = model("attention").withMixers(Collections.nCopies(2, new org.kindling.models.mixers.attention.AttentionSpec(2, 2, fly)))
                .withChannelMixers(Collections.nCopies(2, new org.kindling.models.channel.MlpSpec(4, true, bf)));
        int[] seq = tokens(11, 30);
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(cfg, dev, 3)) {
            float[] full = model.logits(TokenBatch.single(seq)).toFloatArray();
            try (DecodeSession s = model.newSession(1)) {
                assertClose(full, 0, s.stepAll(java.util.Arrays.copyOf(seq, 10)), 0, 10 * VOCAB, "structured prefill");
                for (int i = 10; i < seq.length; i++) {
                    assertClose(full, i * VOCAB, s.stepAll(new int[] {seq[i]}), 0, VOCAB, "structured token " + i);
                }
            }
        }
    }

    @ParameterizedTest
    @MethodSource("types")
    void aBatchOfSequencesDecodesAsEachAlone(String type) {
        int[][] prompts = {tokens(2, 5), tokens(3, 1), tokens(4, 23)};
        int[][] next = {tokens(5, 4), tokens(6, 4), tokens(7, 4)};
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(model(type), dev, 3)) {
            List<float[][]> batched = new ArrayList<>();
            try (DecodeSession s = model.newSession(3)) {
                batched.add(s.step(prompts));
                for (int i = 0; i < 4; i++) {
                    batched.add(s.step(new int[][] {{next[0][i]}, {next[1][i]}, {next[2][i]}}));
                }
                assertEquals(27, s.length(2));
            }
            for (int b = 0; b < 3; b++) {
                try (DecodeSession alone = model.newSession(1)) {
                    assertClose(alone.step(new int[][] {prompts[b]})[0], 0, batched.get(0)[b], 0, VOCAB, type + " prompt " + b);
                    for (int i = 0; i < 4; i++) {
                        assertClose(alone.step(new int[][] {{next[b][i]}})[0], 0, batched.get(i + 1)[b], 0, VOCAB,
                                type + " sequence " + b + " step " + i);
                    }
                }
            }
        }
    }

    @ParameterizedTest
    @MethodSource("types")
    void packedSequencesDoNotSeeEachOther(String type) {
        int[] a = tokens(8, 31);
        int[] b = tokens(9, 17);
        int[] both = new int[48];
        System.arraycopy(a, 0, both, 0, 31);
        System.arraycopy(b, 0, both, 31, 17);
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(model(type), dev, 3)) {
            float[] alone = model.logits(TokenBatch.single(b)).toFloatArray();
            float[] packed = model.logits(new TokenBatch(both, new int[] {0, 31, 48})).toFloatArray();
            assertClose(alone, 0, packed, 31 * VOCAB, 17 * VOCAB, type + " second sequence");
        }
    }

    @ParameterizedTest
    @MethodSource("types")
    void trainsAndResumesBitIdentically(String type) {
        ModelConfig cfg = model(type);
        TrainConfig train = new TrainConfig(7, 3e-3, 3e-4, 2, 8, 0.1, 0.9, 0.95, 1e-8, 1.0, 1, 512, 5, 0, 2);
        RunConfig run = new RunConfig(cfg, train);
        List<Double> straight = new ArrayList<>();
        float[] straightWeights;
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(cfg, dev, train.seed()); Trainer t = new Trainer(model, train)) {
            DataSource d = data();
            for (int i = 0; i < 8; i++) {
                straight.add(t.step(d).loss());
            }
            straightWeights = model.params().values().toFloatArray();
        }
        assertTrue(straight.get(7) < straight.get(0), type + " loss did not fall: " + straight);
        Checkpoints ckpt = new Checkpoints(new LocalRunStorage(dir));
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(cfg, dev, train.seed()); Trainer t = new Trainer(model, train)) {
            DataSource d = data();
            for (int i = 0; i < 4; i++) {
                t.step(d);
            }
            ckpt.save(t, run, 2, d.position());
        }
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(cfg, dev, train.seed()); Trainer t = new Trainer(model, train)) {
            Checkpoints.State state = ckpt.restore(ckpt.latest().orElseThrow(), t);
            DataSource d = data();
            d.seek(state.dataPosition());
            List<Double> resumed = new ArrayList<>();
            for (int i = 4; i < 8; i++) {
                resumed.add(t.step(d).loss());
            }
            assertEquals(straight.subList(4, 8), resumed, type);
            assertArrayEquals(straightWeights, model.params().values().toFloatArray(), type);
        }
    }

    private static DataSource data() {
        return Synthetic.source(Synthetic.associativeRecall(VOCAB - 1, 24, 64, 5), 8);
    }
}
