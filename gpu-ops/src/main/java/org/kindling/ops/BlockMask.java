package org.kindling.ops;

import java.util.function.BiPredicate;

/**
 * Which (query block, key block) pairs block-sparse attention computes, over positions inside
 * each sequence (FlashAttention's block-sparse variant). Skipped blocks cost nothing. Block sizes
 * are multiples of {@link #GRANULE}, the attention kernels' tile, so a mask never splits a tile
 * and a dense mask reproduces the dense kernel exactly. The kept blocks are a square
 * {@link BlockLayout}, the general form the block-sparse GEMMs use.
 */
public final class BlockMask {
    /** The attention kernels' tile edge; every mask block is a whole number of tiles. */
    public static final int GRANULE = 128;

    private final BlockLayout layout;

    private BlockMask(BlockLayout layout) {
        this.layout = layout;
    }

    /** A mask over sequences up to {@code maxSeqlen} tokens from a predicate on (query block, key block). */
    public static BlockMask of(int maxSeqlen, int blockSize, BiPredicate<Integer, Integer> rule) {
        if (blockSize < GRANULE || blockSize % GRANULE != 0) {
            throw new IllegalArgumentException("block size must be a positive multiple of " + GRANULE + ", got " + blockSize);
        }
        if (maxSeqlen < 1) {
            throw new IllegalArgumentException("maxSeqlen must be at least 1, got " + maxSeqlen);
        }
        int n = (maxSeqlen + blockSize - 1) / blockSize;
        return new BlockMask(BlockLayout.of(n, n, blockSize, rule));
    }

    /** Every block: must give exactly the dense kernel's result. */
    public static BlockMask dense(int maxSeqlen, int blockSize) {
        return of(maxSeqlen, blockSize, (i, j) -> true);
    }

    /** Local (banded) attention: blocks at most {@code window} blocks apart. */
    public static BlockMask localWindow(int maxSeqlen, int blockSize, int window) {
        if (window < 0) {
            throw new IllegalArgumentException("window must be >= 0 blocks, got " + window);
        }
        return of(maxSeqlen, blockSize, (i, j) -> Math.abs(i - j) <= window);
    }

    /**
     * Sparse Transformer's strided pattern plus global blocks: the diagonal, every block a multiple
     * of {@code stride} away, and the first {@code global} block rows and columns.
     */
    public static BlockMask strided(int maxSeqlen, int blockSize, int stride, int global) {
        if (stride < 1 || global < 0) {
            throw new IllegalArgumentException("strided mask needs stride >= 1 and global >= 0, got " + stride + ", " + global);
        }
        return of(maxSeqlen, blockSize, (i, j) -> (i - j) % stride == 0 || i < global || j < global);
    }

    /**
     * Pixelated Butterfly's flat block butterfly: the sum of the butterfly factors of size up to
     * {@code butterflySize} (a power of two) — block (i, j) is kept when i XOR j is 0 or a power
     * of two below {@code butterflySize}.
     */
    public static BlockMask flatButterfly(int maxSeqlen, int blockSize, int butterflySize) {
        if (butterflySize < 1 || Integer.bitCount(butterflySize) != 1) {
            throw new IllegalArgumentException("butterfly size must be a power of two, got " + butterflySize);
        }
        return of(maxSeqlen, blockSize, (i, j) -> {
            int x = i ^ j;
            return x == 0 || (Integer.bitCount(x) == 1 && x < butterflySize);
        });
    }

    public int blockSize() {
        return layout.blockSize();
    }

    /** The kept blocks as a layout over (query block, key block). */
    public BlockLayout layout() {
        return layout;
    }

    /** Blocks per side: the mask covers sequences up to blocks·blockSize tokens. */
    public int blocks() {
        return layout.rowBlocks();
    }

    public boolean allowed(int queryBlock, int keyBlock) {
        return layout.contains(queryBlock, keyBlock);
    }

    /** Fraction of blocks kept (causal masking not counted). */
    public double density() {
        return layout.density();
    }

    @Override
    public String toString() {
        return "BlockMask[" + blocks() + "x" + blocks() + " blocks of " + blockSize() + ", density "
                + String.format("%.3f", density()) + "]";
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof BlockMask m && m.layout.equals(layout);
    }

    @Override
    public int hashCode() {
        return layout.hashCode();
    }
}
