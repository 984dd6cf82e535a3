package org.kindling.ops;

/**
 * Seeds of random streams (dropout masks, …) derived from a run seed and the stream's coordinates
 * (worker, step, micro-batch, layer) through SplitMix64's finaliser, so nearby run seeds or
 * coordinates give unrelated streams, never shifted copies of one another.
 */
public final class Seeds {
    private static final long GOLDEN = 0x9E3779B97F4A7C15L;

    private Seeds() {
    }

    /** SplitMix64's finaliser: a bijection of 64-bit values that scrambles every input bit. */
    public static long mix(long z) {
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        return z ^ (z >>> 31);
    }

    /**
     * 24 uniform random bits for element {@code index} of the counter-based stream {@code seed}:
     * a pure function of the two, so any thread or backend draws the same value for an element.
     */
    public static int bits24(long seed, long index) {
        return (int) (mix(seed + (index + 1) * GOLDEN) >>> 40);
    }

    /** The seed of the stream at {@code coordinates} under {@code seed}. */
    public static long derive(long seed, long... coordinates) {
        long h = mix(seed);
        for (long c : coordinates) {
            h = mix(h + (c + 1) * GOLDEN);
        }
        return h;
    }
}
