package org.kindling.models;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Arrays;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.kindling.models.config.DeqConfig;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.RunConfig;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.deq.FixedPointSolver.Method;
import org.kindling.models.nn.Param;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;
import org.kindling.ops.cpu.CpuDevice;
import org.kindling.ops.reference.ReferenceDevice;

/**
 * The deep equilibrium model (config key deq): its implicit gradients against finite differences
 * and against backpropagation through the unrolled iteration, activation memory independent of the
 * solver's iterations, decoding against the full forward, and the config's checks.
 */
class DeqTest {
    private static final int[] TOKENS = {3, 16, 0, 5, 5, 9, 1, 2, 11, 7, 4};
    private static final TokenBatch BATCH = new TokenBatch(TOKENS, new int[] {0, 5, 11});

    /** One attention + MLP block, d_model 8; init 0.2 keeps the block's branches a contraction (the plain iteration z ← f(z) converges). */
    private static ModelConfig config(DeqConfig deq) {
        return ModelConfig.gpt(17, 8, 1, 2, 1, 16, 2, 0, 0.2, 1e-5).withDeq(deq);
    }

    private static DeqConfig solver(Method m, int maxIter, double tol) {
        return new DeqConfig(m, 6, maxIter, tol, maxIter, tol, 0, 1);
    }

    private static double[] gradients(Gpt model) {
        model.train(42, 1.0 / BATCH.size(), v -> { });
        model.params().zeroGrad();
        model.forward(BATCH, 1f);
        model.backward();
        return model.params().grads().toDoubleArray();
    }

    private static double maxAbs(double[] a) {
        return Arrays.stream(a).map(Math::abs).max().orElse(0);
    }

    /** Central differences of the loss in double on the reference device, every parameter entry; the solve is tight. */
    @Test
    void implicitGradientEqualsFiniteDifferences() {
        for (Method m : Method.values()) {
            try (Device dev = ReferenceDevice.open(); Gpt model = new Gpt(config(solver(m, 200, 1e-6)), dev, 5)) {
                double[] grad = gradients(model);
                Map<String, Double> metrics = model.metrics().values();
                assertTrue(metrics.get("deq_fwd_residual") < 1e-6, m + " forward " + metrics);
                assertTrue(metrics.get("deq_bwd_residual") < 1e-6, m + " backward " + metrics);
                assertTrue(metrics.get("deq_fwd_iters") > 3, m + " a fixed point one step away proves nothing: " + metrics);
                double scale = maxAbs(grad);
                Tensor values = model.params().values();
                double[] w = values.toDoubleArray();
                double h = 1e-3;
                for (int i = 0; i < w.length; i += 7) {
                    double keep = w[i];
                    w[i] = keep + h;
                    values.copyFrom(w);
                    double up = model.forward(BATCH, 0f);
                    w[i] = keep - h;
                    values.copyFrom(w);
                    double down = model.forward(BATCH, 0f);
                    w[i] = keep;
                    values.copyFrom(w);
                    double fd = (up - down) / (2 * h);
                    assertEquals(fd, grad[i], 2e-3 * scale + 1e-3 * Math.abs(fd), m + " parameter entry " + i);
                }
            }
        }
    }

    /** Unrolled pre-training with many applications reaches the same point: its gradients equal the implicit ones. */
    @Test
    void implicitGradientEqualsUnrolledBackpropagation() {
        DeqConfig implicit = solver(Method.ANDERSON, 200, 1e-7);
        DeqConfig unrolled = new DeqConfig(Method.ANDERSON, 6, 200, 1e-7, 200, 1e-7, 1, 150);
        try (Device dev = ReferenceDevice.open(); Gpt a = new Gpt(config(implicit), dev, 5); Gpt b = new Gpt(config(unrolled), dev, 5)) {
            double[] ga = gradients(a);
            double[] gb = gradients(b);
            assertTrue(b.metrics().values().get("deq_fwd_residual") < 1e-6, "150 applications converge: " + b.metrics().values());
            double scale = maxAbs(ga);
            assertTrue(scale > 0);
            for (Param p : a.params().list()) {
                double[] x = p.grad().toDoubleArray();
                double[] y = b.params().get(p.name()).grad().toDoubleArray();
                for (int i = 0; i < x.length; i++) {
                    assertEquals(x[i], y[i], 1e-4 * scale, p.name() + "[" + i + "]");
                }
            }
            // A few applications are not the fixed point: the test above would notice a solver that stops early.
            DeqConfig shallow = new DeqConfig(Method.ANDERSON, 6, 200, 1e-7, 200, 1e-7, 1, 2);
            try (Gpt c = new Gpt(config(shallow), dev, 5)) {
                double[] gc = gradients(c);
                double diff = 0;
                for (int i = 0; i < ga.length; i++) {
                    diff = Math.max(diff, Math.abs(ga[i] - gc[i]));
                }
                assertTrue(diff > 1e-3 * scale, "two applications gave the fixed point's gradients: " + diff);
            }
        }
    }

    /** Device memory of a training pass: the same at 10 and at 50 solver iterations (tol 0 runs them all). */
    @Test
    void activationMemoryDoesNotGrowWithIterations() {
        long[] bytes = new long[2];
        int[] iters = {10, 50};
        for (int k = 0; k < 2; k++) {
            try (Device dev = CpuDevice.open(1); Gpt model = new Gpt(config(solver(Method.ANDERSON, iters[k], 0)), dev, 5)) {
                long base = dev.liveBytes();
                dev.resetPeak();
                gradients(model);
                bytes[k] = dev.peakBytes() - base;
                Map<String, Double> metrics = model.metrics().values();
                assertEquals(iters[k] + 1, metrics.get("deq_fwd_iters"), "every iteration ran, then the saved application");
                assertEquals(iters[k], metrics.get("deq_bwd_iters"));
            }
        }
        assertTrue(bytes[0] > 0);
        assertEquals(bytes[0], bytes[1], "device bytes of a pass at 10 and 50 iterations");
    }

    /** Each decoding step's logits equal the full forward's at the same positions (the block is causal). */
    @Test
    void decodingEqualsTheFullForward() {
        int[] a = {3, 16, 0, 5, 5, 9, 1};
        int[] b = {2, 11, 7, 4};
        try (Device dev = ReferenceDevice.open(); Gpt model = new Gpt(config(solver(Method.ANDERSON, 200, 1e-7)), dev, 5)) {
            float[] fa = model.logits(TokenBatch.single(a)).toFloatArray();
            float[] fb = model.logits(TokenBatch.single(b)).toFloatArray();
            int v = 17;
            try (DecodeSession s = model.newSession(2)) {
                assertEquals(0, s.stateBytes());
                int da = 0;
                int db = 0;
                for (int c : new int[] {3, 1, 2, 1}) {
                    int na = Math.min(c, a.length - da);
                    int nb = Math.min(c, b.length - db);
                    float[][] got = s.step(new int[][] {Arrays.copyOfRange(a, da, da + na), Arrays.copyOfRange(b, db, db + nb)});
                    da += na;
                    db += nb;
                    close(fa, (da - 1) * v, got[0], "sequence a at " + da);
                    if (nb > 0) {
                        close(fb, (db - 1) * v, got[1], "sequence b at " + db);
                    } else {
                        assertNull(got[1]);
                    }
                }
            }
            try (DecodeSession s = model.newSession(1)) {
                float[] first = s.stepAll(Arrays.copyOf(a, 4));
                float[] rest = s.stepAll(Arrays.copyOfRange(a, 4, a.length));
                close(fa, 0, Arrays.copyOf(first, 4 * v), "stepAll prefix");
                close(fa, 4 * v, rest, "stepAll rest");
            }
        }
    }

    /** Prefix and whole sequence are solved as different vectors: equal to within the solver's tolerance. */
    private static void close(float[] full, int offset, float[] got, String what) {
        for (int i = 0; i < got.length; i++) {
            assertEquals(full[offset + i], got[i], 1e-4, what + " logit " + i);
        }
    }

    @Test
    void configKeysAreReadCheckedAndWrittenBack() {
        String base = "vocab: 10\nd_model: 8\nn_layer: 1\nn_head: 2\nmax_seq: 16\n";
        ModelConfig cfg = RunConfig.parse(base + "deq: {solver: broyden, history: 4, max_iter: 12, tol: 1.0e-4, pretrain_steps: 3}\n",
                "m.yaml").model();
        assertEquals(new DeqConfig(Method.BROYDEN, 4, 12, 1e-4, 12, 1e-4, 3, 6), cfg.deq());
        assertEquals(cfg, RunConfig.parse(new RunConfig(cfg, RunConfig.parse(base, "m.yaml").train()).toYaml(), "again.yaml").model());
        assertNull(RunConfig.parse(base, "m.yaml").model().deq(), "no deq key: the stack of blocks");
        assertEquals("m.yaml: deq.solver is \"newton\"; known: anderson, broyden",
                error(base + "deq: {solver: newton}\n"));
        assertEquals("m.yaml: deq.history must be at least 1, got 0", error(base + "deq: {history: 0}\n"));
        assertEquals("m.yaml: deq.tol must be in [0, 1) (a relative residual), got 2.0", error(base + "deq: {tol: 2.0}\n"));
        assertTrue(error(base + "deq: {max_iters: 3}\n").startsWith("m.yaml: unknown key deq.max_iters"));
        assertTrue(error(base.replace("n_layer: 1", "n_layer: 2") + "deq: {}\n").startsWith("m.yaml: deq needs n_layer: 1"));
        assertTrue(error(base + "channel_mixer: moe\ndeq: {}\n").startsWith("m.yaml: deq does not take channel_mixer moe"));
    }

    private static String error(String yaml) {
        return assertThrows(IllegalArgumentException.class, () -> RunConfig.parse(yaml, "m.yaml")).getMessage();
    }
}
