package org.kindling.models;

import static org.junit.jupiter.api.Assertions.fail;

import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.function.DoubleSupplier;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;
import org.kindling.ops.reference.ReferenceDevice;

/**
 * Central finite differences in double precision against a layer's backward, on the fp64
 * reference device ({@link org.kindling.ops.reference.ReferenceDevice#open}), where layers run unchanged with every tensor held
 * in double. With h = 1e-5 the difference quotient errs by about h²·L''' + ε·Σ|terms of L|/h,
 * around 1e-10 here, so the cap |fd − analytic| ≤ 1e-6·max(|fd|, |analytic|) + 1e-9 holds for a
 * right gradient and fails for any wrong or missing term (those err by a fraction of the gradient
 * itself). Every entry of every probed tensor is checked.
 */
final class GradCheck {
    private static final double H = 1e-5;
    static final double RTOL = 1e-6;
    static final double ATOL = 1e-9;

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
        for (Probe p : probes) {
            if (p.value().device().kind() != Device.Kind.REFERENCE) {
                throw new IllegalArgumentException(what + ": " + p.name() + " is on " + p.value().device()
                        + "; double-precision gradient checks run on ReferenceDevice.open()");
            }
        }
        loss.getAsDouble();
        backward.run();
        List<double[]> analytic = new ArrayList<>();
        for (Probe p : probes) {
            analytic.add(p.grad().toDoubleArray());
        }
        int checked = 0;
        for (int pi = 0; pi < probes.size(); pi++) {
            Probe p = probes.get(pi);
            double[] g = analytic.get(pi);
            double[] v = p.value().toDoubleArray();
            for (int idx = 0; idx < v.length; idx++) {
                Tensor entry = p.value().view(idx, 1);
                entry.copyFrom(new double[] {v[idx] + H});
                double plus = loss.getAsDouble();
                entry.copyFrom(new double[] {v[idx] - H});
                double minus = loss.getAsDouble();
                entry.copyFrom(new double[] {v[idx]});
                double fd = (plus - minus) / (2 * H);
                if (!(Math.abs(fd - g[idx]) <= RTOL * Math.max(Math.abs(fd), Math.abs(g[idx])) + ATOL)) {
                    fail(what + ": d/d" + p.name() + "[" + idx + "] analytic " + g[idx] + " vs finite difference " + fd);
                }
                checked++;
            }
        }
        if (checked == 0) {
            fail(what + ": nothing was probed");
        }
    }

    /** Σ w·y in double: the probe loss for a layer output y and fixed random weights w. */
    static double dot(Tensor y, double[] w) {
        double[] v = y.toDoubleArray();
        double s = 0;
        for (int i = 0; i < v.length; i++) {
            s += v[i] * w[i];
        }
        return s;
    }

    static double[] uniform(long seed, int n, double scale) {
        SplittableRandom r = new SplittableRandom(seed);
        double[] x = new double[n];
        for (int i = 0; i < n; i++) {
            x[i] = (r.nextDouble() * 2 - 1) * scale;
        }
        return x;
    }
}
