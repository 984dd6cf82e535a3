package org.kindling.ops;

/**
 * Uniform noise as a pure function of (seed, element index), like {@link DropoutMask}: every
 * backend and thread count draws the same values, and a resumed run regenerates them from the
 * step's seed. Used for Switch's multiplicative router jitter (lo = 1 − ε, hi = 1 + ε).
 */
public final class Noise {
    private static final double ULP24 = 1.0 / (1 << 24);

    private Noise() {
    }

    /** Checks the interval of {@link Backend#uniformNoise}: finite, lo &lt; hi. */
    public static void checkRange(float lo, float hi) {
        if (!(Float.isFinite(lo) && Float.isFinite(hi) && lo < hi)) {
            throw new IllegalArgumentException("uniformNoise needs finite lo < hi, got [" + lo + ", " + hi + ")");
        }
    }

    /** Element {@code index} of the stream {@code seed}, uniform in [lo, hi). */
    public static float uniform(long seed, long index, float lo, float hi) {
        double u = Seeds.bits24(seed, index) * ULP24;
        float v = (float) (lo + ((double) hi - lo) * u);
        // Rounding to float can land on hi itself; the interval stays half-open.
        return v < hi ? v : Math.nextDown(hi);
    }
}
