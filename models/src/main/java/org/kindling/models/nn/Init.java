package org.kindling.models.nn;

import java.util.SplittableRandom;

/**
 * How a tensor starts: fills its host values from the model's one seeded stream, so a model's
 * weights depend only on its config and seed. Layers with structured initialisations (S4D's
 * log-dt and A) pass their own.
 */
@FunctionalInterface
public interface Init {
    /** Writes the {@code Tensor.numel(shape)} values of a tensor of {@code shape} to {@code dst[off…]}. */
    void fill(float[] dst, int off, int[] shape, SplittableRandom rnd);

    static Init constant(double value) {
        return (dst, off, shape, rnd) -> java.util.Arrays.fill(dst, off, off + numel(shape), (float) value);
    }

    static Init zeros() {
        return constant(0);
    }

    static Init ones() {
        return constant(1);
    }

    /** N(0, std²), by Box–Muller from the stream. */
    static Init normal(double std) {
        return (dst, off, shape, rnd) -> {
            for (int i = 0, n = numel(shape); i < n; i++) {
                dst[off + i] = (float) (gaussian(rnd) * std);
            }
        };
    }

    /** U(lo, hi). */
    static Init uniform(double lo, double hi) {
        return (dst, off, shape, rnd) -> {
            for (int i = 0, n = numel(shape); i < n; i++) {
                dst[off + i] = (float) (lo + (hi - lo) * rnd.nextDouble());
            }
        };
    }

    static double gaussian(SplittableRandom r) {
        double u = 1 - r.nextDouble();
        return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * r.nextDouble());
    }

    static int numel(int[] shape) {
        return org.kindling.ops.Tensor.numel(shape);
    }
}
