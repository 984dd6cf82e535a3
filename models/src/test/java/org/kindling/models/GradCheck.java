package org.kindling.models;

import static org.junit.jupiter.api.Assertions.fail;

import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.function.DoubleSupplier;
import org.kindling.ops.Tensor;

/**
 * Central finite differences in fp32 against a layer's backward. The loss L is summed in double
 * from fp32 outputs; the step h = 1e-2 keeps fp32 rounding of L below the tolerance, and the
 * tolerance |fd − analytic| ≤ 2e-2·max(|fd|, |analytic|) + 2e-3 is far below what a wrong or
 * missing term produces on the probed entries (the largest gradients of each tensor plus random ones).
 */
final class GradCheck {
    private static final float H = 1e-2f;

    /** A tensor to probe and the tensor its analytic gradient was accumulated into. */
    record Probe(String name, Tensor value, Tensor grad) {
    }

    private GradCheck() {
    }

    /**
     * @param loss runs the forward and returns L
     * @param backward runs the backward, accumulating into zeroed gradient tensors
     */
    static void check(String what, DoubleSupplier loss, Runnable backward, List<Probe> probes) {
        loss.getAsDouble();
        backward.run();
        List<float[]> analytic = new ArrayList<>();
        for (Probe p : probes) {
            analytic.add(p.grad().toFloatArray());
        }
        SplittableRandom rnd = new SplittableRandom(17);
        int checked = 0;
        for (int pi = 0; pi < probes.size(); pi++) {
            Probe p = probes.get(pi);
            float[] g = analytic.get(pi);
            for (int idx : indices(g, rnd)) {
                float[] v = p.value().toFloatArray();
                float keep = v[idx];
                v[idx] = keep + H;
                p.value().copyFrom(v);
                double plus = loss.getAsDouble();
                v[idx] = keep - H;
                p.value().copyFrom(v);
                double minus = loss.getAsDouble();
                v[idx] = keep;
                p.value().copyFrom(v);
                double fd = (plus - minus) / ((double) (keep + H) - (double) (keep - H));
                double an = g[idx];
                if (!(Math.abs(fd - an) <= 2e-2 * Math.max(Math.abs(fd), Math.abs(an)) + 2e-3)) {
                    fail(what + ": d/d" + p.name() + "[" + idx + "] analytic " + an + " vs finite difference " + fd);
                }
                checked++;
            }
        }
        if (checked == 0) {
            fail(what + ": nothing was probed");
        }
    }

    /** The two largest-magnitude entries and three random ones. */
    private static List<Integer> indices(float[] g, SplittableRandom rnd) {
        List<Integer> out = new ArrayList<>();
        int best = -1;
        int second = -1;
        for (int i = 0; i < g.length; i++) {
            if (best < 0 || Math.abs(g[i]) > Math.abs(g[best])) {
                second = best;
                best = i;
            } else if (second < 0 || Math.abs(g[i]) > Math.abs(g[second])) {
                second = i;
            }
        }
        if (best >= 0) {
            out.add(best);
        }
        if (second >= 0) {
            out.add(second);
        }
        for (int i = 0; i < 3 && g.length > 0; i++) {
            out.add(rnd.nextInt(g.length));
        }
        return out;
    }

    /** Σ w·y in double: the probe loss for a layer output y and fixed random weights w. */
    static double dot(Tensor y, float[] w) {
        float[] v = y.toFloatArray();
        double s = 0;
        for (int i = 0; i < v.length; i++) {
            s += (double) v[i] * w[i];
        }
        return s;
    }

    static float[] uniform(long seed, int n, double scale) {
        SplittableRandom r = new SplittableRandom(seed);
        float[] x = new float[n];
        for (int i = 0; i < n; i++) {
            x[i] = (float) ((r.nextDouble() * 2 - 1) * scale);
        }
        return x;
    }
}
