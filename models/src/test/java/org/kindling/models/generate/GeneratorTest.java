package org.kindling.models.generate;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.kindling.models.DecodeSession;
import org.kindling.models.Gpt;
import org.kindling.models.channel.SparseFfnSpec;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.Synthetic;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.nn.Activation;
import org.kindling.models.nn.Activations;
import org.kindling.models.train.Trainer;
import org.kindling.ops.Device;
import org.kindling.ops.cpu.CpuDevice;

class GeneratorTest {
    private static final ModelConfig CFG = ModelConfig.gpt(23, 32, 2, 4, 2, 300, 4, 0, 0.2, 1e-5);

    @Test
    void cachedDecodingReproducesTheFullForwardLogits() {
        SplittableRandom r = new SplittableRandom(1);
        int[] tokens = new int[200];
        for (int i = 0; i < tokens.length; i++) {
            tokens[i] = r.nextInt(23);
        }
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(CFG, dev, 4)) {
            float[] full = model.logits(TokenBatch.single(tokens)).toFloatArray();
            try (DecodeSession session = model.newSession(1)) {
                // A 150-token prefill (two attention tiles), then one token at a time.
                float[] pre = session.stepAll(java.util.Arrays.copyOf(tokens, 150));
                assertClose(full, 0, pre, 150 * 23, "prefill");
                for (int i = 150; i < 200; i++) {
                    assertClose(full, i * 23, session.stepAll(new int[] {tokens[i]}), 23, "token " + i);
                }
                assertEquals(200, session.length(0));
            }
        }
    }

    /** Decoding between a training forward and its backward leaves the backward's saved activations intact. */
    @Test
    void decodingBetweenForwardAndBackwardLeavesTheGradientsAlone() {
        SplittableRandom r = new SplittableRandom(3);
        int[] tokens = new int[97];
        for (int i = 0; i < tokens.length; i++) {
            tokens[i] = r.nextInt(23);
        }
        TokenBatch batch = new TokenBatch(tokens, new int[] {0, 40, 97});
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(CFG, dev, 4)) {
            model.forward(batch, 1f);
            model.backward();
            float[] plain = model.params().grads().toFloatArray();
            model.params().zeroGrad();
            model.forward(batch, 1f);
            new Generator(model).generate(new int[] {1, 2, 3, 4, 5}, 7, Sampling.greedy(), 0, -1);
            model.backward();
            assertArrayEquals(plain, model.params().grads().toFloatArray());
        }
    }

    @Test
    void readingASavedActivationThatWasNeverWrittenIsAnError() {
        try (Device dev = CpuDevice.open(1); Activations acts = new Activations(dev, "h.0.attn")) {
            Activation q = acts.f32("q");
            IllegalStateException e = assertThrows(IllegalStateException.class, () -> q.saved(5, 8));
            assertTrue(e.getMessage().contains("saved activation h.0.attn.q F32[5, 8]") && e.getMessage().contains("never written"),
                    e.getMessage());
            q.write(4, 8);
            e = assertThrows(IllegalStateException.class, () -> q.saved(5, 8));
            assertTrue(e.getMessage().contains("last written as [4, 8]"), e.getMessage());
            assertEquals(4, q.saved(4, 8).rows());
        }
    }

    private static void assertClose(float[] full, int offset, float[] got, int n, String what) {
        for (int i = 0; i < n; i++) {
            float want = full[offset + i];
            assertEquals(want, got[i], 1e-4f * (1 + Math.abs(want)), what + " logit " + i);
        }
    }

    /**
     * A model with sparse FFNs trains (its loss falls) and then decodes: a prefill of more rows than
     * a block has units takes the masked dense pass, single tokens gather their units, and both
     * reproduce the full forward's logits; sampling runs on it.
     */
    @Test
    void aSparseFfnModelTrainsThenDecodesLikeItsFullForward() {
        ModelConfig cfg = CFG.withChannelMixers(java.util.List.of(new SparseFfnSpec(128, 8, 16, 0.1, 0.3),
                new SparseFfnSpec(128, 16, 8, 0.1, 0.3)));
        TrainConfig train = new TrainConfig(7, 3e-3, 3e-4, 3, 40, 0.1, 0.9, 0.95, 1e-8, 1.0, 1, 512, 5, 0, 2);
        DataSource data = Synthetic.source(Synthetic.associativeRecall(20, 32, 256, 5), 8);
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(cfg, dev, 4); Trainer t = new Trainer(model, train)) {
            double first = 0;
            double last = 0;
            for (int i = 0; i < 40; i++) {
                double loss = t.step(data).loss();
                first += i < 5 ? loss / 5 : 0;
                last += i >= 35 ? loss / 5 : 0;
            }
            assertTrue(last < first - 0.1, "mean loss of the first 5 steps " + first + ", of the last 5 " + last);
            SplittableRandom r = new SplittableRandom(2);
            int[] tokens = new int[40];
            for (int i = 0; i < tokens.length; i++) {
                tokens[i] = r.nextInt(23);
            }
            float[] full = model.logits(TokenBatch.single(tokens)).toFloatArray();
            try (DecodeSession session = model.newSession(1)) {
                assertClose(full, 0, session.stepAll(java.util.Arrays.copyOf(tokens, 20)), 20 * 23, "prefill");
                for (int i = 20; i < 40; i++) {
                    assertClose(full, i * 23, session.stepAll(new int[] {tokens[i]}), 23, "token " + i);
                }
            }
            assertEquals(12, new Generator(model).generate(new int[] {1, 2, 3}, 12, new Sampling(1.0, 5, 0.9), 3, -1).length);
        }
    }

    @Test
    void greedyIsArgmaxAndSeededSamplingRepeats() {
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(CFG, dev, 4)) {
            Generator gen = new Generator(model);
            int[] prompt = {1, 2, 3};
            int[] greedy = gen.generate(prompt, 20, Sampling.greedy(), 0, -1);
            assertEquals(20, greedy.length);
            // Greedy decoding equals re-running the full model and taking the argmax each time.
            int[] seq = java.util.Arrays.copyOf(prompt, 23);
            for (int i = 0; i < 20; i++) {
                float[] logits = model.logits(TokenBatch.single(java.util.Arrays.copyOf(seq, 3 + i))).toFloatArray();
                int best = 0;
                for (int v = 1; v < 23; v++) {
                    if (logits[(2 + i) * 23 + v] > logits[(2 + i) * 23 + best]) {
                        best = v;
                    }
                }
                assertEquals(best, greedy[i], "token " + i);
                seq[3 + i] = best;
            }
            Sampling warm = new Sampling(1.5, 10, 0.9);
            int[] a = gen.generate(prompt, 30, warm, 42, -1);
            assertArrayEquals(a, gen.generate(prompt, 30, warm, 42, -1));
            assertNotEquals(java.util.Arrays.toString(a), java.util.Arrays.toString(gen.generate(prompt, 30, warm, 43, -1)));
        }
    }

    @Test
    void emptyPromptStartsFromEndOfTextAndStopsAtIt() {
        try (Device dev = CpuDevice.open(1); Gpt model = new Gpt(CFG, dev, 4)) {
            Generator gen = new Generator(model);
            int eot = 22;
            int[] fromEmpty = gen.generate(new int[0], 10, Sampling.greedy(), 0, eot);
            assertTrue(fromEmpty.length > 0);
            assertArrayEquals(gen.generate(new int[] {eot}, 10, Sampling.greedy(), 0, eot), fromEmpty);
            // Stop as soon as end-of-text is produced: make it the only likely token with top-k 1 at its own logit.
            int[] all = gen.generate(new int[] {5}, 40, new Sampling(1.0, 0, 1.0), 9, -1);
            int stopAt = all[3];
            int[] stopped = gen.generate(new int[] {5}, 40, new Sampling(1.0, 0, 1.0), 9, stopAt);
            assertTrue(stopped.length <= 4 && stopped[stopped.length - 1] == stopAt, java.util.Arrays.toString(stopped));
            assertThrows(IllegalArgumentException.class, () -> gen.generate(new int[0], 5, Sampling.greedy(), 0, -1));
            assertThrows(IllegalArgumentException.class, () -> gen.generate(new int[] {1}, 400, Sampling.greedy(), 0, -1));
        }
    }

    /** Prompts of different lengths decode as one batch, each continuing as it would alone. */
    @Test
    void aBatchOfPromptsDecodesAsEachPromptAlone() {
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(CFG, dev, 4)) {
            Generator gen = new Generator(model);
            int[][] prompts = {{1, 2, 3}, {7}, {4, 4, 9, 11, 2, 6, 0, 13}};
            Sampling warm = new Sampling(1.2, 0, 1.0);
            int[][] batch = gen.generate(prompts, 12, warm, 5, 17);
            for (int b = 0; b < prompts.length; b++) {
                int[][] alone = new int[][] {new int[0], new int[0], new int[0]};
                alone[b] = prompts[b];
                int[][] single = gen.generate(new int[][] {prompts[b]}, 12, warm, Long.MIN_VALUE, 17);
                assertTrue(single[0].length > 0);
                // Same per-sequence stream only when the index matches: compare greedy, where no stream is drawn.
                int[] greedyAlone = gen.generate(prompts[b], 12, Sampling.greedy(), 0, 17);
                assertArrayEquals(greedyAlone, gen.generate(prompts, 12, Sampling.greedy(), 0, 17)[b], "prompt " + b);
                assertTrue(batch[b].length <= 12);
            }
            try (DecodeSession session = model.newSession(2)) {
                float[][] first = session.step(new int[][] {{1, 2, 3}, {}});
                assertTrue(first[1] == null && first[0].length == 23);
                assertEquals(0, session.length(1));
                assertThrows(IllegalArgumentException.class, () -> session.step(new int[][] {{}, {}}));
            }
        }
    }

    @Test
    void topKAndTopPRestrictTheCandidates() {
        float[] logits = {0f, 5f, 4.9f, -3f, 1f};
        SplittableRandom rnd = new SplittableRandom(3);
        for (int i = 0; i < 200; i++) {
            int k1 = new Sampling(1.0, 1, 1.0).pick(logits, rnd);
            assertEquals(1, k1);
            int k2 = new Sampling(1.0, 2, 1.0).pick(logits, rnd);
            assertTrue(k2 == 1 || k2 == 2);
            int p = new Sampling(1.0, 0, 0.5).pick(logits, rnd);
            assertEquals(1, p, "top-p 0.5 keeps only the most likely token here");
        }
        assertThrows(IllegalArgumentException.class, () -> new Sampling(-1, 0, 1));
        assertThrows(IllegalArgumentException.class, () -> new Sampling(1, 0, 0));
    }
}
