package org.kindling.models.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.kindling.models.Gpt;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.OptimizerConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.Synthetic;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;
import org.kindling.ops.cpu.CpuDevice;

class MfacTest {
    private static final ModelConfig MODEL = ModelConfig.gpt(20, 32, 2, 4, 2, 64, 4, 0, 0.02, 1e-5);

    private static float[] gaussian(SplittableRandom rnd, int n) {
        float[] x = new float[n];
        for (int i = 0; i < n; i++) {
            // Box–Muller: normal entries, so the Gram matrix is neither diagonal nor singular.
            x[i] = (float) (Math.sqrt(-2 * Math.log(1 - rnd.nextDouble())) * Math.cos(2 * Math.PI * rnd.nextDouble()));
        }
        return x;
    }

    private static float[] product(Device dev, int m, double damp, List<float[]> inserted, float[] x) {
        int d = x.length;
        try (MfacWindow w = new MfacWindow(dev, m, d, damp); Tensor g = dev.allocate(DType.F32, d);
             Tensor xt = dev.allocate(DType.F32, d); Tensor out = dev.allocate(DType.F32, d)) {
            for (int i = 0; i < inserted.size(); i++) {
                g.copyFrom(inserted.get(i));
                w.insert(i % m, g, 1f);
            }
            xt.copyFrom(x);
            w.multiply(out, xt);
            return out.toFloatArray();
        }
    }

    private static void assertClose(double[] expected, float[] actual, double rel) {
        double scale = 0;
        for (double e : expected) {
            scale = Math.max(scale, Math.abs(e));
        }
        for (int i = 0; i < expected.length; i++) {
            assertEquals(expected[i], actual[i], rel * scale, "element " + i);
        }
    }

    /** With one gradient the window's Fisher is λI + ggᵀ, whose inverse Sherman–Morrison gives in closed form. */
    @Test
    void oneGradientEqualsShermanMorrison() {
        SplittableRandom rnd = new SplittableRandom(1);
        int d = 37;
        double damp = 0.05;
        float[] g = gaussian(rnd, d);
        float[] x = gaussian(rnd, d);
        double gx = 0;
        double gg = 0;
        for (int i = 0; i < d; i++) {
            gx += (double) g[i] * x[i];
            gg += (double) g[i] * g[i];
        }
        double[] expected = new double[d];
        for (int i = 0; i < d; i++) {
            expected[i] = (x[i] - g[i] * gx / (damp + gg)) / damp;
        }
        try (Device dev = CpuDevice.open(2)) {
            assertClose(expected, product(dev, 1, damp, List.of(g), x), 1e-4);
        }
    }

    @Test
    void aFullWindowEqualsADenseDoubleSolve() {
        SplittableRandom rnd = new SplittableRandom(2);
        int d = 37;
        int m = 5;
        List<float[]> grads = new ArrayList<>();
        for (int i = 0; i < m; i++) {
            grads.add(gaussian(rnd, d));
        }
        float[] x = gaussian(rnd, d);
        try (Device dev = CpuDevice.open(2)) {
            assertClose(MfacWindow.dense(grads, m, x, 0.1), product(dev, m, 0.1, grads, x), 1e-4);
            // A window not yet full holds zero rows, which add nothing to F (still 1/m per gradient).
            List<float[]> two = grads.subList(0, 2);
            assertClose(MfacWindow.dense(two, m, x, 0.1), product(dev, m, 0.1, two, x), 1e-4);
        }
    }

    /** The ring drops the oldest gradient: after 12 insertions into 5 rows the product is that of the last 5. */
    @Test
    void afterMoreThanMInsertionsItEqualsTheSolveWithTheLastM() {
        SplittableRandom rnd = new SplittableRandom(3);
        int d = 37;
        int m = 5;
        List<float[]> grads = new ArrayList<>();
        for (int i = 0; i < 12; i++) {
            grads.add(gaussian(rnd, d));
        }
        float[] x = gaussian(rnd, d);
        try (Device dev = CpuDevice.open(2)) {
            assertClose(MfacWindow.dense(grads.subList(7, 12), m, x, 0.1), product(dev, m, 0.1, grads, x), 1e-4);
        }
    }

    /** The product with the gradient just inserted reuses its dot products and equals multiply's. */
    @Test
    void insertAndMultiplyEqualsInsertThenMultiply() {
        SplittableRandom rnd = new SplittableRandom(4);
        int d = 37;
        int m = 3;
        try (Device dev = CpuDevice.open(2); MfacWindow a = new MfacWindow(dev, m, d, 0.1); MfacWindow b = new MfacWindow(dev, m, d, 0.1);
             Tensor g = dev.allocate(DType.F32, d); Tensor scaled = dev.allocate(DType.F32, d);
             Tensor outA = dev.allocate(DType.F32, d); Tensor outB = dev.allocate(DType.F32, d)) {
            for (int i = 0; i < 5; i++) {
                float[] gi = gaussian(rnd, d);
                g.copyFrom(gi);
                a.insertAndMultiply(outA, i % m, g, 0.5f);
                b.insert(i % m, g, 0.5f);
                float[] half = new float[d];
                for (int j = 0; j < d; j++) {
                    half[j] = gi[j] * 0.5f;
                }
                scaled.copyFrom(half);
                b.multiply(outB, scaled);
                assertArrayEquals(outB.toFloatArray(), outA.toFloatArray(), "insertion " + i);
            }
        }
    }

    @Test
    void badSizesAreRefusedWithTheReason() {
        try (Device dev = CpuDevice.open(1)) {
            IllegalArgumentException big = assertThrows(IllegalArgumentException.class, () -> new MfacWindow(dev, 1024, 4_000_000, 1e-4));
            assertTrue(big.getMessage().contains("optimizer.ngrads"), big.getMessage());
            try (MfacWindow w = new MfacWindow(dev, 2, 5, 1e-4); Tensor x = dev.allocate(DType.F32, 4); Tensor out = dev.allocate(DType.F32, 5)) {
                IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> w.multiply(out, x));
                assertTrue(e.getMessage().contains("x has 4 elements"), e.getMessage());
            }
        }
    }

    static TrainConfig mfacConfig(double momentum) {
        return new TrainConfig(7, 1e-2, 1e-3, 2, 30, 0.1, 0.9, 0.95, 1e-8, 1.0, 1, 512, 5, 0, 2)
                .withOptimizer(OptimizerConfig.mfac(8, 1e-4, momentum));
    }

    private static List<Double> losses(TrainConfig cfg, int steps) {
        DataSource data = Synthetic.source(Synthetic.associativeRecall(20, 32, 256, 5), 8);
        List<Double> out = new ArrayList<>();
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(MODEL, dev, cfg.seed()); Trainer t = new Trainer(model, cfg)) {
            assertTrue(t.optimizer() instanceof MfacOptimizer);
            assertTrue(t.optimizer().describe().contains("window 8 × " + model.params().count() + " fp32"), t.optimizer().describe());
            for (int i = 0; i < steps; i++) {
                out.add(t.step(data).loss());
            }
        }
        return out;
    }

    private static double mean(List<Double> xs) {
        return xs.stream().mapToDouble(Double::doubleValue).average().orElseThrow();
    }

    @Test
    void aTinyModelTrainsWithFallingLoss() {
        for (double momentum : new double[] {0, 0.9}) {
            List<Double> l = losses(mfacConfig(momentum), 30);
            assertTrue(mean(l.subList(25, 30)) < mean(l.subList(0, 5)) - 0.2, "momentum " + momentum + ": " + l);
        }
    }
}
