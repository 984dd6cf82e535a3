package org.kindling.models;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Collections;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;
import org.kindling.models.channel.ChannelSpec;
import org.kindling.models.channel.MlpSpec;
import org.kindling.models.channel.MoeSpec;
import org.kindling.models.channel.SparseFfnSpec;
import org.kindling.models.config.LayerDefaults;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.Recompute;
import org.kindling.models.config.RunConfig;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.mixers.Mixers;
import org.kindling.models.mixers.attention.AttentionSpec;
import org.kindling.models.nn.LinearSpec;
import org.kindling.models.nn.Precision;
import org.kindling.ops.Device;
import org.kindling.ops.cpu.CpuDevice;

/**
 * Full activation recomputation: every block keeps only its input between forward and backward,
 * and the gradients are the same bits as without it, for every registered token mixer beside
 * every kind of channel mixer that can be recomputed, with dropout on; and the model holds less
 * memory at its peak.
 */
class RecomputeTest {
    private static final int VOCAB = 23;
    private static final int C = 16;

    @TempDir
    Path dir;

    static Stream<String> mixers() {
        return Mixers.types().stream();
    }

    /** Two packed sequences; a micro-batch of another length second, so buffers are reused at another shape. */
    private static List<TokenBatch> batches() {
        SplittableRandom r = new SplittableRandom(9);
        int[] a = new int[37];
        int[] b = new int[21];
        for (int i = 0; i < a.length; i++) {
            a[i] = r.nextInt(VOCAB);
        }
        for (int i = 0; i < b.length; i++) {
            b[i] = r.nextInt(VOCAB);
        }
        return List.of(new TokenBatch(a, new int[] {0, 20, 37}), TokenBatch.single(b));
    }

    /**
     * Layer 0 the mixer under test with a dense MLP, layer 1 the same mixer with a sparse FFN, layer 2
     * attention with Pixelfly projections and a butterfly MLP: every recomputable channel mixer.
     */
    private static ModelConfig config(String mixer) {
        LinearSpec fly = new LinearSpec(LinearSpec.Kind.PIXELFLY, 4, 2, 1, 2, true);
        LinearSpec bf = new LinearSpec(LinearSpec.Kind.BUTTERFLY, 32, 16, 2, 32, false);
        var spec = Mixers.named(mixer, new LayerDefaults(C, 2, 2, 4));
        List<ChannelSpec> channels = List.of(new MlpSpec(4), new SparseFfnSpec(32, 4, 3, 0.5, 0.5), new MlpSpec(4, true, bf));
        return ModelConfig.gpt(VOCAB, C, 3, 2, 2, 64, 4, 0.1, 0.2, 1e-5)
                .withMixers(List.of(spec, spec, new AttentionSpec(2, 2, fly)))
                .withChannelMixers(channels);
    }

    /** Two micro-batches of training (dropout on) accumulated; returns [losses, gradients]. */
    private static float[][] train(Gpt model) {
        model.params().zeroGrad();
        List<TokenBatch> bs = batches();
        float[] losses = new float[bs.size()];
        for (int i = 0; i < bs.size(); i++) {
            model.train(100 + i, 1.0 / 58, v -> { });
            losses[i] = (float) model.forward(bs.get(i), 1f);
            model.backward();
        }
        return new float[][] {losses, model.params().grads().toFloatArray()};
    }

    @ParameterizedTest(name = "{0}")
    @MethodSource("mixers")
    void gradientsAreBitIdenticalToKeepingEveryActivation(String mixer) {
        ModelConfig cfg = config(mixer);
        try (Device dev = CpuDevice.open(2); Gpt plain = new Gpt(cfg, dev, 4); Gpt recomputed = new Gpt(cfg, dev, 4)) {
            recomputed.recompute(Recompute.FULL);
            float[][] want = train(plain);
            float[][] got = train(recomputed);
            assertArrayEquals(want[0], got[0], mixer + " losses");
            assertArrayEquals(want[1], got[1], mixer + " gradients");
            boolean any = false;
            for (float g : got[1]) {
                any |= g != 0;
            }
            assertTrue(any, "no gradient: the comparison would compare nothing");
            // A second step, and evaluation in between, still match: nothing recomputed is left stale.
            plain.logits(batches().get(1));
            recomputed.logits(batches().get(1));
            assertArrayEquals(train(plain)[1], train(recomputed)[1], mixer + " second step");
            // Recomputation off again: the model keeps its activations and still agrees.
            recomputed.recompute(Recompute.NONE);
            assertArrayEquals(train(plain)[1], train(recomputed)[1], mixer + " after switching off");
        }
    }

    /** Under bf16 GEMM operands the recompute rewrites the bf16 copies the backward reads with the same bits. */
    @ParameterizedTest(name = "{0}")
    @MethodSource("mixers")
    void gradientsAreBitIdenticalUnderBf16(String mixer) {
        ModelConfig cfg = config(mixer);
        try (Device dev = CpuDevice.open(2); Gpt plain = new Gpt(cfg, dev, 4); Gpt recomputed = new Gpt(cfg, dev, 4)) {
            plain.params().setPrecision(Precision.BF16);
            recomputed.params().setPrecision(Precision.BF16);
            recomputed.recompute(Recompute.FULL);
            float[][] want = train(plain);
            float[][] got = train(recomputed);
            assertArrayEquals(want[0], got[0], mixer + " losses");
            assertArrayEquals(want[1], got[1], mixer + " gradients");
        }
    }

    /** The most device memory held during one forward and backward of a 6-layer attention model, beyond its weights and gradients. */
    private static long peakActivationBytes(Recompute mode) {
        ModelConfig cfg = ModelConfig.gpt(VOCAB, 32, 6, 4, 4, 256, 4, 0.1, 0.2, 1e-5);
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(cfg, dev, 4)) {
            model.recompute(mode);
            int[] tokens = new int[256];
            for (int i = 0; i < tokens.length; i++) {
                tokens[i] = (i * 7) % VOCAB;
            }
            TokenBatch b = TokenBatch.single(tokens);
            long weights = dev.liveBytes();
            dev.resetPeak();
            model.train(1, 1.0 / 256, v -> { });
            model.forward(b, 1f);
            model.backward();
            return dev.peakBytes() - weights;
        }
    }

    @Test
    void recomputationLowersPeakActivationBytes() {
        long kept = peakActivationBytes(Recompute.NONE);
        long recomputed = peakActivationBytes(Recompute.FULL);
        // Six blocks' saved activations against one block's plus the six inputs: well under two thirds.
        assertTrue(recomputed * 3 < kept * 2, "peak activation bytes: recompute " + recomputed + " vs kept " + kept);
    }

    @Test
    void trainConfigKeyIsValidatedAndRefusedForMixturesOfExperts() throws Exception {
        Path ok = dir.resolve("ok.yaml");
        Files.writeString(ok, "vocab: 64\nd_model: 16\nn_layer: 2\nn_head: 2\nmax_seq: 32\ntrain:\n  recompute: full\n");
        RunConfig rc = RunConfig.load(ok);
        assertEquals(Recompute.FULL, rc.train().recompute());
        assertEquals("full", rc.train().toMap().get("recompute"));
        Path bad = dir.resolve("bad.yaml");
        Files.writeString(bad, "vocab: 64\nd_model: 16\nn_layer: 2\nn_head: 2\nmax_seq: 32\ntrain:\n  recompute: some\n");
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> RunConfig.load(bad));
        assertTrue(e.getMessage().contains("train.recompute must be one of none, full, got 'some'"), e.getMessage());
        Path moe = dir.resolve("moe.yaml");
        Files.writeString(moe, "vocab: 64\nd_model: 16\nn_layer: 2\nn_head: 2\nmax_seq: 32\nchannel_mixer: moe\ntrain:\n  recompute: full\n");
        e = assertThrows(IllegalArgumentException.class, () -> RunConfig.load(moe));
        assertTrue(e.getMessage().contains("train.recompute full cannot recompute layer 0's channel mixer moe"), e.getMessage());
        ModelConfig moeModel = ModelConfig.gpt(VOCAB, C, 1, 2, 2, 64, 4, 0, 0.2, 1e-5)
                .withChannelMixers(Collections.nCopies(1, new MoeSpec(3, 10, 2, 0, 0, 0, 0)));
        try (Device dev = CpuDevice.open(1); Gpt model = new Gpt(moeModel, dev, 1)) {
            assertThrows(IllegalArgumentException.class, () -> model.recompute(Recompute.FULL));
        }
    }
}
