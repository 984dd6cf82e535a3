package org.kindling.models.nn;

/**
 * The flat block butterfly layout of Pixelated Butterfly (Chen, Dao et al., 2022), as the authors'
 * reference code lays it out: the butterfly's k nodes split each side of W [OC, IC] into k equal
 * parts (OC/k × IC/k features per node pair); node pair (a, b) is kept iff a XOR b is 0 or 2^p for
 * p below {@code factors} (the butterfly's factors, smallest strides first: the sum of their
 * supports, flattened into one pattern); and a block of the block size is kept iff it overlaps a
 * kept node pair. With k nodes of one block each on a square matrix that is the XOR rule on
 * blocks, with k·(log₂k + 1) blocks for every factor; a rectangular matrix stretches each node
 * along its longer side, and nodes that do not fall on block edges keep every block they touch.
 */
public final class FlatButterfly {
    private FlatButterfly() {
    }

    /**
     * @param out output features OC (rows of W[OC, IC]), a multiple of the block size and of k
     * @param in input features IC, a multiple of the block size and of k
     * @param block the block size of the layout
     * @param butterflySize k, a power of two ≥ 1
     * @param factors how many butterfly factors, 0…log₂k (0 keeps only the node diagonal)
     * @return mask[i][j] over [OC / block][IC / block]: whether block (i, j) is kept
     */
    public static boolean[][] layout(int out, int in, int block, int butterflySize, int factors) {
        if (block < 1 || out < 1 || in < 1 || out % block != 0 || in % block != 0) {
            throw new IllegalArgumentException("flat butterfly: block " + block + " must divide out " + out + " and in " + in);
        }
        if (butterflySize < 1 || Integer.bitCount(butterflySize) != 1) {
            throw new IllegalArgumentException("flat butterfly: butterfly size " + butterflySize + " is not a power of two");
        }
        int log = Integer.numberOfTrailingZeros(butterflySize);
        if (factors < 0 || factors > log) {
            throw new IllegalArgumentException("flat butterfly: factors " + factors + " must be in 0…log2(butterfly size " + butterflySize + ") = " + log);
        }
        if (out % butterflySize != 0 || in % butterflySize != 0) {
            throw new IllegalArgumentException("flat butterfly: butterfly size " + butterflySize + " must divide out " + out
                    + " and in " + in + " (each of its nodes spans out/k × in/k features); a multiple of it is needed");
        }
        int nodeRows = out / butterflySize;
        int nodeCols = in / butterflySize;
        boolean[][] mask = new boolean[out / block][in / block];
        for (int i = 0; i < mask.length; i++) {
            for (int j = 0; j < mask[i].length; j++) {
                for (int a = i * block / nodeRows; a <= ((i + 1) * block - 1) / nodeRows && !mask[i][j]; a++) {
                    for (int b = j * block / nodeCols; b <= ((j + 1) * block - 1) / nodeCols; b++) {
                        if (kept(a ^ b, factors)) {
                            mask[i][j] = true;
                            break;
                        }
                    }
                }
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
