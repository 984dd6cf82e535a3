package org.kindling.models.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.kindling.models.Gpt;
import org.kindling.models.channel.MlpSpec;
import org.kindling.models.channel.MoeSpec;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.Synthetic;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.nn.LayerNorm;
import org.kindling.models.nn.Param;
import org.kindling.ops.Device;
import org.kindling.ops.cpu.CpuDevice;

class TrainerTest {
    private static final ModelConfig MODEL = ModelConfig.gpt(20, 32, 2, 4, 2, 64, 4, 0, 0.02, 1e-5);

    private static TrainConfig train(int accum) {
        return new TrainConfig(7, 3e-3, 3e-4, 3, 12, 0.1, 0.9, 0.95, 1e-8, 1.0, accum, 512, 5, 0, 2);
    }

    private static List<Double> run(Device dev, TrainConfig cfg, DataSource data, int steps, float[][] weightsOut) {
        List<Double> losses = new ArrayList<>();
        try (Gpt model = new Gpt(MODEL, dev, cfg.seed()); Trainer t = new Trainer(model, cfg)) {
            for (int i = 0; i < steps; i++) {
                StepResult r = t.step(data);
                assertEquals(i + 1, r.step());
                losses.add(r.loss());
            }
            weightsOut[0] = model.params().values().toFloatArray();
        }
        return losses;
    }

    private static DataSource data(int batchSize) {
        return Synthetic.source(Synthetic.associativeRecall(20, 32, 256, 5), batchSize);
    }

    /** The golden trajectory: fixed seed and data → these losses. A model-level change that moves them must say why. */
    @Test
    void goldenLossTrajectory() {
        double[] golden = GOLDEN;
        float[][] w = new float[1][];
        try (Device dev = CpuDevice.open(2)) {
            List<Double> losses = run(dev, train(1), data(8), golden.length, w);
            for (int i = 0; i < golden.length; i++) {
                assertEquals(golden[i], losses.get(i), 1e-4 * golden[i], "loss at step " + (i + 1) + " of " + losses);
            }
        }
    }

    /** train.recompute: full reaches the model through the trainer and leaves the trajectory's bits alone (accumulated micro-batches too). */
    @Test
    void recomputationTrainsTheSameBits() {
        float[][] plain = new float[1][];
        float[][] recomputed = new float[1][];
        try (Device a = CpuDevice.open(2); Device b = CpuDevice.open(2)) {
            List<Double> want = run(a, train(2), data(8), 3, plain);
            List<Double> got = run(b, train(2).withRecompute(org.kindling.models.config.Recompute.FULL), data(8), 3, recomputed);
            assertEquals(want, got);
            assertArrayEquals(plain[0], recomputed[0]);
            // The key took effect: the recomputing run held less at its peak.
            assertTrue(b.peakBytes() < a.peakBytes(), b.peakBytes() + " vs " + a.peakBytes());
        }
    }

    /**
     * AdamW's first update is lr·g/(|g| + ε) per element (bias correction makes m̂ = g, v̂ = g²), so
     * each parameter group's step size shows directly: the S4D dynamics move by dynamics_lr × lr
     * without decay, matrices by lr plus lr·wd·w of decay.
     */
    @Test
    void eachParameterGroupStepsAtItsOwnRateAndDecay() {
        ModelConfig s4d = MODEL.withMixers(java.util.Collections.nCopies(2,
                new org.kindling.models.mixers.ssm.S4dSpec(8, "lin", 1e-3, 1e-1, 0.25, 1024)));
        TrainConfig cfg = new TrainConfig(7, 1e-3, 1e-3, 0, 100, 0.1, 0.9, 0.95, 1e-12, 0, 1, 512, 5, 0, 2);
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(s4d, dev, 3); Trainer t = new Trainer(model, cfg)) {
            float[] before = model.params().values().toFloatArray();
            t.step(data(8));
            float[] after = model.params().values().toFloatArray();
            float[] grads = model.params().grads().toFloatArray();
            int base = model.params().values().offset();
            int checked = 0;
            for (Param p : model.params().list()) {
                int off = p.value().offset() - base;
                for (int i = 0; i < p.numel(); i++) {
                    double g = grads[off + i];
                    if (Math.abs(g) < 1e-6) {
                        continue;
                    }
                    double w = before[off + i];
                    double expected = -cfg.lr() * p.group().lrScale() * Math.signum(g)
                            - (p.group().decay() ? cfg.lr() * p.group().lrScale() * cfg.weightDecay() * w : 0);
                    assertEquals(expected, after[off + i] - w, 1e-6 * cfg.lr() + 1e-6 * Math.abs(w), p.name() + "[" + i + "]");
                    checked++;
                }
            }
            assertTrue(checked > 1000, "checked " + checked);
            assertTrue(model.params().list().stream().anyMatch(p -> p.group().lrScale() == 0.25 && !p.group().decay()));
        }
    }

    static final double[] GOLDEN = {3.031944779679179, 2.9900568183511496, 2.946925899013877, 2.903836578130722,
        2.852422036230564, 2.7999118641018867, 2.771446041762829, 2.7453444935381413};

    /** Nearby run seeds, steps, workers and micro-batches draw unrelated masks, not shifted copies of one another. */
    @Test
    void nearbySeedsDrawUnrelatedDropoutMasks() {
        long[] seeds = {Trainer.dropoutSeed(5, 0, 3, 0), Trainer.dropoutSeed(6, 0, 3, 0), Trainer.dropoutSeed(5, 1, 3, 0),
            Trainer.dropoutSeed(5, 0, 4, 0), Trainer.dropoutSeed(5, 0, 3, 1)};
        int n = 4096;
        for (int a = 0; a < seeds.length; a++) {
            for (int b = a + 1; b < seeds.length; b++) {
                for (int shift = -3; shift <= 3; shift++) {
                    int same = 0;
                    for (int i = 3; i < n - 3; i++) {
                        same += org.kindling.ops.DropoutMask.keeps(seeds[a], i, 0.5f)
                                == org.kindling.ops.DropoutMask.keeps(seeds[b], i + shift, 0.5f) ? 1 : 0;
                    }
                    // Independent masks agree on about half the elements (± 4 standard deviations).
                    assertTrue(Math.abs(same - (n - 6) / 2.0) < 4 * Math.sqrt(n) / 2, "streams " + a + " and " + b
                            + " shifted by " + shift + " agree on " + same + " of " + (n - 6));
                }
            }
        }
    }

    @Test
    void sameSeedAndDataGiveBitIdenticalRuns() {
        float[][] a = new float[1][];
        float[][] b = new float[1][];
        try (Device dev = CpuDevice.open(2)) {
            List<Double> first = run(dev, train(2), data(8), 6, a);
            List<Double> second = run(dev, train(2), data(8), 6, b);
            assertEquals(first, second);
            assertArrayEquals(a[0], b[0]);
        }
    }

    @Test
    void dropoutIsDeterministicPerStepAndOnlyWhileTraining() {
        ModelConfig withDropout = ModelConfig.gpt(20, 32, 2, 4, 2, 64, 4,
                0.2, 0.02, 1e-5);
        List<List<Double>> runs = new ArrayList<>();
        float[] logitsA = null;
        for (int r = 0; r < 2; r++) {
            try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(withDropout, dev, 7); Trainer t = new Trainer(model, train(1))) {
                List<Double> losses = new ArrayList<>();
                DataSource d = data(8);
                for (int i = 0; i < 4; i++) {
                    losses.add(t.step(d).loss());
                }
                runs.add(losses);
                TokenBatch b = Synthetic.associativeRecall(20, 32, 2, 1).batch(0, 2);
                float[] once = model.logits(b).toFloatArray();
                assertArrayEquals(once, model.logits(b).toFloatArray(), "no dropout outside training");
                logitsA = once;
            }
        }
        assertEquals(runs.get(0), runs.get(1));
        float[][] w = new float[1][];
        try (Device dev = CpuDevice.open(2)) {
            List<Double> without = run(dev, train(1), data(8), 4, w);
            assertTrue(!without.equals(runs.get(0)), "dropout changes the trajectory");
        }
        assertTrue(logitsA.length > 0);
    }

    @Test
    void accumulatingTwoHalvesMatchesOneWholeBatch() {
        float[][] halves = new float[1][];
        float[][] whole = new float[1][];
        try (Device dev = CpuDevice.open(2)) {
            List<Double> a = run(dev, train(2), data(4), 5, halves);
            List<Double> b = run(dev, train(1), data(8), 5, whole);
            for (int i = 0; i < 5; i++) {
                assertEquals(b.get(i), a.get(i), 1e-5, "loss at step " + (i + 1));
            }
            for (int i = 0; i < whole[0].length; i++) {
                assertEquals(whole[0][i], halves[0][i], 1e-5f, "weight " + i);
            }
        }
    }

    @Test
    void aNanStopsTrainingNamingTheStepAndParameter() {
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(MODEL, dev, 1); Trainer t = new Trainer(model, train(1))) {
            DataSource d = data(8);
            t.step(d);
            Param fc = model.params().get("h.1.mlp.fc.weight");
            float[] w = fc.value().toFloatArray();
            w[3] = Float.NaN;
            fc.value().copyFrom(w);
            float[] before = model.params().values().toFloatArray();
            NonFiniteException e = assertThrows(NonFiniteException.class, () -> t.step(d));
            assertEquals(2, e.step());
            assertTrue(e.getMessage().startsWith("step 2: loss is NaN"), e.getMessage());
            assertEquals("wte.weight", e.parameter(), "the first parameter in layer order with a NaN gradient");
            assertArrayEquals(before, model.params().values().toFloatArray(), "no update is applied");
            assertEquals(1, t.stepCount());
        }
    }

    /** A NaN reaching an MoE router's top-k is the same clean stop, not a kernel's argument error. */
    @Test
    void aNanReachingAMixtureOfExpertsRouterStopsTrainingAsNonFinite() {
        ModelConfig moe = MODEL.withChannelMixers(List.of(new MlpSpec(4), new MoeSpec(4, 64, 1, 0, 0.01, 0.001, 0)));
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(moe, dev, 1); Trainer t = new Trainer(model, train(1))) {
            DataSource d = data(8);
            t.step(d);
            Param router = model.params().get("h.1.moe.router.weight");
            float[] w = router.value().toFloatArray();
            w[0] = Float.NaN;
            router.value().copyFrom(w);
            float[] before = model.params().values().toFloatArray();
            NonFiniteException e = assertThrows(NonFiniteException.class, () -> t.step(d));
            assertEquals(2, e.step());
            assertTrue(e.getMessage().startsWith("step 2: the forward pass met a non-finite value: topK x["), e.getMessage());
            assertArrayEquals(before, model.params().values().toFloatArray(), "no update is applied");
            assertEquals(1, t.stepCount());
        }
    }

    @Test
    void aBatchWithNothingToPredictIsRefused() {
        try (Device dev = CpuDevice.open(1); Gpt model = new Gpt(MODEL, dev, 1); Trainer t = new Trainer(model, train(1))) {
            DataSource single = new DataSource() {
                public TokenBatch next() {
                    return new TokenBatch(new int[] {1, 2}, new int[] {0, 1, 2});
                }

                public long position() {
                    return 0;
                }

                public void seek(long p) {
                }
            };
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> t.step(single));
            assertTrue(e.getMessage().contains("predict no token"), e.getMessage());
        }
        // One micro-batch of one-token chunks (an end-of-text piece) beside one that predicts: a step like any other.
        try (Device dev = CpuDevice.open(1); Gpt model = new Gpt(MODEL, dev, 1); Trainer t = new Trainer(model, train(2))) {
            int[] calls = {0};
            DataSource mixed = DataSource.indexed(p -> calls[0]++ % 2 == 0 ? new TokenBatch(new int[] {1, 2}, new int[] {0, 1, 2})
                    : new TokenBatch(new int[] {1, 2, 3, 4}, new int[] {0, 4}));
            assertTrue(Double.isFinite(t.step(mixed).loss()));
        }
    }

    /**
     * What data-parallel overlap relies on: the backward pass hands over every parameter exactly
     * once, final LayerNorm first and embeddings last, and a gradient never changes after it was handed over.
     */
    @Test
    void backwardHandsOverEachParameterOnceWithItsFinalGradient() {
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(MODEL, dev, 3)) {
            TokenBatch batch = Synthetic.associativeRecall(20, 32, 4, 9).batch(0, 4);
            List<String> order = new ArrayList<>();
            List<float[]> atHandOver = new ArrayList<>();
            model.params().zeroGrad();
            model.forward(batch, 1f / batch.predicted());
            model.backward((group, ready) -> {
                // The CPU's kernels are synchronous: the group's fence is done when it is handed over.
                assertTrue(ready.isDone(), group.get(0).name());
                group.forEach(p -> {
                    order.add(p.name());
                    atHandOver.add(p.grad().toFloatArray());
                });
            });
            assertEquals(model.params().list().size(), order.size());
            assertEquals(model.params().list().size(), new java.util.HashSet<>(order).size(), "each parameter once: " + order);
            assertTrue(order.get(0).startsWith("ln_f."), order.toString());
            assertTrue(order.indexOf("h.1.ln_1.weight") < order.indexOf("h.0.ln_1.weight"), order.toString());
            assertEquals(List.of("wte.weight", "wpe.weight"), order.subList(order.size() - 2, order.size()));
            for (int i = 0; i < order.size(); i++) {
                assertArrayEquals(atHandOver.get(i), model.params().get(order.get(i)).grad().toFloatArray(), order.get(i));
            }
        }
    }
}
