package org.kindling.ops;

/**
 * The dropout mask as a pure function of (seed, element index): a SplitMix64 hash compared with
 * p. Every backend draws the same mask, backward regenerates it instead of storing it, and a
 * resumed run reproduces it from the step's seed.
 */
public final class DropoutMask {
    private DropoutMask() {
    }

    /** Whether dropout with probability p keeps element {@code index} under {@code seed}. */
    public static boolean keeps(long seed, long index, float p) {
        long z = seed + (index + 1) * 0x9E3779B97F4A7C15L;
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        z ^= z >>> 31;
        return (z >>> 40) >= (long) (p * (1L << 24));
    }
}
