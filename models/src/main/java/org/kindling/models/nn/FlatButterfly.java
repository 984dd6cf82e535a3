package org.kindling.models.nn;

/**
 * The flat block butterfly layout of Pixelated Butterfly (Dao et al., 2022): the sum of the
 * butterfly factors' supports, flattened into one block-sparse pattern. On a square grid of n
 * blocks, block (i, j) is kept iff i XOR j is 0 or 2^p for p below {@code factors} (strides 1, 2,
 * …, as the butterfly's factors in increasing stride), with 2^p below the butterfly size k; with
 * every factor (log₂k) that is n·(log₂k + 1) blocks when k divides n. A rectangular grid takes the
 * square layout of the smaller side and stretches it along the larger: each block row (or column)
 * of the square layout is repeated ratio times, so the larger side must be a multiple of the smaller.
 */
public final class FlatButterfly {
    private FlatButterfly() {
    }

    /**
     * @param blockRows output blocks (rows of W[OC, IC] over the block size)
     * @param blockCols input blocks
     * @param butterflySize k, a power of two ≥ 1
     * @param factors how many butterfly factors, 0…log₂k (0 keeps only the block diagonal)
     * @return mask[i][j]: whether block (i, j) is kept
     */
    public static boolean[][] layout(int blockRows, int blockCols, int butterflySize, int factors) {
        if (blockRows < 1 || blockCols < 1) {
            throw new IllegalArgumentException("flat butterfly: block grid " + blockRows + "×" + blockCols + " must be at least 1×1");
        }
        if (butterflySize < 1 || Integer.bitCount(butterflySize) != 1) {
            throw new IllegalArgumentException("flat butterfly: butterfly size " + butterflySize + " is not a power of two");
        }
        int log = Integer.numberOfTrailingZeros(butterflySize);
        if (factors < 0 || factors > log) {
            throw new IllegalArgumentException("flat butterfly: factors " + factors + " must be in 0…log2(butterfly size " + butterflySize + ") = " + log);
        }
        int small = Math.min(blockRows, blockCols);
        int large = Math.max(blockRows, blockCols);
        if (large % small != 0) {
            throw new IllegalArgumentException("flat butterfly: block grid " + blockRows + "×" + blockCols
                    + " is rectangular with a larger side that is not a multiple of the smaller");
        }
        int ratio = large / small;
        boolean[][] mask = new boolean[blockRows][blockCols];
        for (int i = 0; i < blockRows; i++) {
            for (int j = 0; j < blockCols; j++) {
                int si = blockRows > blockCols ? i / ratio : i;
                int sj = blockCols > blockRows ? j / ratio : j;
                mask[i][j] = kept(si ^ sj, factors);
            }
        }
        return mask;
    }

    /** d = i XOR j is 0 or one of the first {@code factors} strides 1, 2, 4, …. */
    private static boolean kept(int d, int factors) {
        return d == 0 || (Integer.bitCount(d) == 1 && Integer.numberOfTrailingZeros(d) < factors);
    }

    /** The number of kept blocks. */
    public static int count(boolean[][] mask) {
        int n = 0;
        for (boolean[] row : mask) {
            for (boolean b : row) {
                n += b ? 1 : 0;
            }
        }
        return n;
    }
}
