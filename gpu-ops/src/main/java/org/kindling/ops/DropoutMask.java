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
        return Seeds.bits24(seed, index) >= threshold(p);
    }

    /** The least 24-bit draw that keeps an element under probability p (device kernels compare against it). */
    public static int threshold(float p) {
        return (int) (long) (p * (1L << 24));
    }
}
