package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.fail;

import java.util.SplittableRandom;

/** Shared helpers: seeded data and element-wise comparison against a double reference. */
final class Check {
    /** The awkward sizes every kernel is tested at. */
    static final int[] SIZES = {1, 7, 59, 97, 1025};

    private Check() {
    }

    static float[] uniform(long seed, int n, double lo, double hi) {
        SplittableRandom r = new SplittableRandom(seed);
        float[] x = new float[n];
        for (int i = 0; i < n; i++) {
            x[i] = (float) (lo + (hi - lo) * r.nextDouble());
        }
        return x;
    }

    static float[] uniform(long seed, int n) {
        return uniform(seed, n, -1, 1);
    }

    static int[] ints(long seed, int n, int bound) {
        SplittableRandom r = new SplittableRandom(seed);
        int[] x = new int[n];
        for (int i = 0; i < n; i++) {
            x[i] = r.nextInt(bound);
        }
        return x;
    }

    /** Fails unless |got − want| ≤ atol + rtol·|want| everywhere, naming the worst element. */
    static void close(String what, double[] want, float[] got, double atol, double rtol) {
        if (want.length != got.length) {
            fail(what + ": length " + got.length + ", expected " + want.length);
        }
        int worst = -1;
        double worstExcess = 0;
        for (int i = 0; i < want.length; i++) {
            double err = Math.abs(got[i] - want[i]);
            double excess = err - (atol + rtol * Math.abs(want[i]));
            if (!(excess <= 0) && (worst < 0 || !(excess <= worstExcess))) {
                worst = i;
                worstExcess = excess;
            }
        }
        if (worst >= 0) {
            fail(what + ": element " + worst + " is " + got[worst] + ", expected " + want[worst]
                    + " (atol " + atol + ", rtol " + rtol + ")");
        }
    }

    static void close(String what, double[] want, float[] got, double tol) {
        close(what, want, got, tol, tol);
    }

    static double[] plus(double[] a, float[] b) {
        double[] out = new double[a.length];
        for (int i = 0; i < a.length; i++) {
            out[i] = a[i] + b[i];
        }
        return out;
    }
}
