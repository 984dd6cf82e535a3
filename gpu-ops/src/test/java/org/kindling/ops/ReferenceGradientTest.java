package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.function.Function;
import org.junit.jupiter.api.Test;

/**
 * Central finite differences of each reference forward against its reference backward, in double
 * precision: the references the kernels are tested against are themselves right. The probe is
 * the loss L = Σ dy·f(x); its gradient in x must equal the backward twin's dx.
 */
class ReferenceGradientTest {
    private static final float H = 1e-3f;
    /** Central differences err by O(h²) ≈ 1e-6 times the third derivative; a wrong formula errs by O(1). */
    private static final double TOL = 1e-5;

    /** Finite-difference gradient of Σ dy·f(x) with respect to x (perturbed in float, evaluated in double). */
    private static double[] numeric(Function<float[], double[]> f, float[] x, float[] dy) {
        double[] g = new double[x.length];
        for (int i = 0; i < x.length; i++) {
            float keep = x[i];
            x[i] = keep + H;
            double plus = dot(f.apply(x), dy);
            x[i] = keep - H;
            double minus = dot(f.apply(x), dy);
            x[i] = keep;
            // Divide by the step the float inputs really took, not the nominal 2h.
            g[i] = (plus - minus) / ((double) (keep + H) - (double) (keep - H));
        }
        return g;
    }

    private static double dot(double[] a, float[] b) {
        double s = 0;
        for (int i = 0; i < a.length; i++) {
            s += a[i] * b[i];
        }
        return s;
    }

    private static void assertGradient(String what, double[] numeric, double[] analytic) {
        for (int i = 0; i < numeric.length; i++) {
            double scale = Math.max(1, Math.abs(numeric[i]));
            assertEquals(numeric[i], analytic[i], TOL * scale, what + " element " + i);
        }
    }

    @Test
    void softmax() {
        int n = 3;
        int c = 7;
        float[] x = Check.uniform(1, n * c, -2, 2);
        float[] dy = Check.uniform(2, n * c);
        assertGradient("softmax", numeric(v -> Reference.softmax(v, n, c), x, dy), Reference.softmaxBackward(dy, x, n, c));
    }

    @Test
    void layerNorm() {
        int n = 3;
        int c = 7;
        float[] x = Check.uniform(3, n * c, -2, 2);
        float[] w = Check.uniform(4, c, 0.5, 1.5);
        float[] b = Check.uniform(5, c);
        float[] dy = Check.uniform(6, n * c);
        double[][] g = Reference.layerNormBackward(dy, x, w, n, c, 1e-5);
        assertGradient("layerNorm dx", numeric(v -> Reference.layerNorm(v, w, b, n, c, 1e-5)[0], x, dy), g[0]);
        assertGradient("layerNorm dweight", numeric(v -> Reference.layerNorm(x, v, b, n, c, 1e-5)[0], w, dy), g[1]);
        assertGradient("layerNorm dbias", numeric(v -> Reference.layerNorm(x, w, v, n, c, 1e-5)[0], b, dy), g[2]);
    }

    @Test
    void rmsNorm() {
        int n = 3;
        int c = 7;
        float[] x = Check.uniform(7, n * c, -2, 2);
        float[] w = Check.uniform(8, c, 0.5, 1.5);
        float[] dy = Check.uniform(9, n * c);
        double[][] g = Reference.rmsNormBackward(dy, x, w, n, c, 1e-6);
        assertGradient("rmsNorm dx", numeric(v -> Reference.rmsNorm(v, w, n, c, 1e-6)[0], x, dy), g[0]);
        assertGradient("rmsNorm dweight", numeric(v -> Reference.rmsNorm(x, v, n, c, 1e-6)[0], w, dy), g[1]);
    }

    @Test
    void gelu() {
        float[] x = Check.uniform(10, 21, -4, 4);
        float[] dy = Check.uniform(11, 21);
        assertGradient("gelu", numeric(Reference::gelu, x, dy), Reference.geluBackward(dy, x));
    }

    @Test
    void crossEntropy() {
        int n = 4;
        int v = 9;
        float[] logits = Check.uniform(12, n * v, -3, 3);
        int[] targets = {3, -100, 0, 8};
        float[] ones = {1, 1, 1, 1};
        assertGradient("crossEntropy", numeric(x -> Reference.crossEntropy(x, targets, n, v, -100), logits, ones),
                Reference.crossEntropyBackward(logits, targets, n, v, -100, 1.0));
    }

    @Test
    void embedding() {
        int vocab = 5;
        int c = 3;
        float[] table = Check.uniform(13, vocab * c);
        int[] ids = {4, 1, 4, 0};
        float[] dy = Check.uniform(14, ids.length * c);
        assertGradient("embedding", numeric(t -> Reference.embedding(ids, t, c), table, dy),
                Reference.embeddingBackward(dy, ids, vocab, c));
    }
}
