package org.kindling.ops;

import java.util.Arrays;
import java.util.function.BiPredicate;

/**
 * Which blocks of a rectangular block grid are non-zero, as CSR over block rows (MegaBlocks'
 * topology): block row r owns the non-zero blocks {@code rowPtr[r] ≤ b < rowPtr[r + 1]}, in
 * increasing column {@code colIdx[b]}. The CSR index b is also where a block's values live in a
 * compressed weight [nnz, blockSize, blockSize] (see {@link Backend#blockSparseLinear}). The
 * column view (CSC) is derived once, so the input gradient walks block columns without a search.
 * {@link BlockMask} is the square special case over sequence positions.
 */
public final class BlockLayout {
    private final int blockSize;
    private final int rowBlocks;
    private final int colBlocks;
    private final int[] rowPtr;
    private final int[] colIdx;
    private final int[] colPtr;
    private final int[] rowIdx;
    private final int[] blockOfCol;
    private final boolean[] present;
    private final int[] runStart;

    private BlockLayout(int blockSize, int rowBlocks, int colBlocks, int[] rowPtr, int[] colIdx) {
        this.blockSize = blockSize;
        this.rowBlocks = rowBlocks;
        this.colBlocks = colBlocks;
        this.rowPtr = rowPtr;
        this.colIdx = colIdx;
        present = new boolean[rowBlocks * colBlocks];
        colPtr = new int[colBlocks + 1];
        for (int b = 0; b < colIdx.length; b++) {
            colPtr[colIdx[b] + 1]++;
        }
        for (int c = 0; c < colBlocks; c++) {
            colPtr[c + 1] += colPtr[c];
        }
        rowIdx = new int[colIdx.length];
        blockOfCol = new int[colIdx.length];
        int[] next = Arrays.copyOf(colPtr, colBlocks);
        for (int r = 0; r < rowBlocks; r++) {
            for (int b = rowPtr[r]; b < rowPtr[r + 1]; b++) {
                int at = next[colIdx[b]]++;
                rowIdx[at] = r;
                blockOfCol[at] = b;
                present[r * colBlocks + colIdx[b]] = true;
            }
        }
        runStart = runs(rowBlocks, rowPtr, colIdx);
    }

    private static int[] runs(int rowBlocks, int[] rowPtr, int[] colIdx) {
        int[] starts = new int[rowBlocks + 1];
        int n = 0;
        for (int r = 0; r < rowBlocks; r++) {
            if (r == 0 || !Arrays.equals(colIdx, rowPtr[r - 1], rowPtr[r], colIdx, rowPtr[r], rowPtr[r + 1])) {
                starts[n++] = r;
            }
        }
        starts[n++] = rowBlocks;
        return Arrays.copyOf(starts, n);
    }

    /** The blocks (r, c) of a rowBlocks × colBlocks grid for which {@code rule} holds. */
    public static BlockLayout of(int rowBlocks, int colBlocks, int blockSize, BiPredicate<Integer, Integer> rule) {
        grid(rowBlocks, colBlocks, blockSize);
        int[] rowPtr = new int[rowBlocks + 1];
        int[] cols = new int[rowBlocks * colBlocks];
        int nnz = 0;
        for (int r = 0; r < rowBlocks; r++) {
            for (int c = 0; c < colBlocks; c++) {
                if (rule.test(r, c)) {
                    cols[nnz++] = c;
                }
            }
            rowPtr[r + 1] = nnz;
        }
        return new BlockLayout(blockSize, rowBlocks, colBlocks, rowPtr, Arrays.copyOf(cols, nnz));
    }

    /** Every block: the block-sparse kernels then compute the dense product. */
    public static BlockLayout dense(int rowBlocks, int colBlocks, int blockSize) {
        return of(rowBlocks, colBlocks, blockSize, (r, c) -> true);
    }

    /**
     * A layout from its CSR arrays (copied), checked: rowPtr has rowBlocks + 1 entries from 0 not
     * decreasing, and each row's column ids are in [0, colBlocks) and strictly increasing.
     */
    public static BlockLayout fromCsr(int rowBlocks, int colBlocks, int blockSize, int[] rowPtr, int[] colIdx) {
        grid(rowBlocks, colBlocks, blockSize);
        if (rowPtr.length != rowBlocks + 1 || rowPtr[0] != 0 || rowPtr[rowBlocks] != colIdx.length) {
            throw new IllegalArgumentException("block layout rowPtr must have " + (rowBlocks + 1)
                    + " entries from 0 to nnz = " + colIdx.length + ", got " + Arrays.toString(rowPtr));
        }
        for (int r = 0; r < rowBlocks; r++) {
            if (rowPtr[r + 1] < rowPtr[r]) {
                throw new IllegalArgumentException("block layout rowPtr decreases at block row " + r);
            }
            for (int b = rowPtr[r]; b < rowPtr[r + 1]; b++) {
                if (colIdx[b] < 0 || colIdx[b] >= colBlocks || (b > rowPtr[r] && colIdx[b] <= colIdx[b - 1])) {
                    throw new IllegalArgumentException("block layout colIdx[" + b + "] = " + colIdx[b] + " in block row "
                            + r + " must be in [0, " + colBlocks + ") and above the previous column of its row");
                }
            }
        }
        return new BlockLayout(blockSize, rowBlocks, colBlocks, rowPtr.clone(), colIdx.clone());
    }

    private static void grid(int rowBlocks, int colBlocks, int blockSize) {
        if (rowBlocks < 1 || colBlocks < 1 || blockSize < 1) {
            throw new IllegalArgumentException("block layout needs at least one block row and column and a positive block size, got "
                    + rowBlocks + " x " + colBlocks + " blocks of " + blockSize);
        }
        if ((long) rowBlocks * colBlocks > Integer.MAX_VALUE || (long) Math.max(rowBlocks, colBlocks) * blockSize > Integer.MAX_VALUE) {
            throw new IllegalArgumentException("block layout " + rowBlocks + " x " + colBlocks + " blocks of " + blockSize
                    + " is too large");
        }
    }

    public int blockSize() {
        return blockSize;
    }

    public int rowBlocks() {
        return rowBlocks;
    }

    public int colBlocks() {
        return colBlocks;
    }

    /** Rows of the matrix the layout covers: rowBlocks · blockSize. */
    public int rows() {
        return rowBlocks * blockSize;
    }

    public int cols() {
        return colBlocks * blockSize;
    }

    /** Non-zero blocks. */
    public int nnz() {
        return colIdx.length;
    }

    public boolean contains(int rowBlock, int colBlock) {
        return present[rowBlock * colBlocks + colBlock];
    }

    /** First CSR index of block row r; its blocks end at {@code rowStart(r + 1)}. */
    public int rowStart(int r) {
        return rowPtr[r];
    }

    /** Column of the block at CSR index b. */
    public int col(int b) {
        return colIdx[b];
    }

    /** First position of block column c in the column view; its entries end at {@code colStart(c + 1)}. */
    public int colStart(int c) {
        return colPtr[c];
    }

    /** Block row of column-view entry e. */
    public int rowOf(int e) {
        return rowIdx[e];
    }

    /** CSR index (the weight block) of column-view entry e. */
    public int blockOf(int e) {
        return blockOfCol[e];
    }

    /**
     * Runs of consecutive block rows with the same columns: run g covers block rows {@code
     * runStart(g) ≤ r < runStart(g + 1)}. A stretched layout (each row of a square pattern
     * repeated) has few long runs, so kernels can multiply a whole run as one wider product.
     */
    public int runs() {
        return runStart.length - 1;
    }

    public int runStart(int g) {
        return runStart[g];
    }

    /** Whether some block row has no blocks (a forward product must then zero its outputs). */
    public boolean hasEmptyRow() {
        for (int r = 0; r < rowBlocks; r++) {
            if (rowPtr[r + 1] == rowPtr[r]) {
                return true;
            }
        }
        return false;
    }

    /** Elements of a compressed weight: nnz · blockSize². */
    public int weightNumel() {
        return colIdx.length * blockSize * blockSize;
    }

    /** Fraction of blocks kept. */
    public double density() {
        return colIdx.length / (double) present.length;
    }

    /** The dense rows × cols matrix of a compressed weight [nnz, blockSize, blockSize]; zeros elsewhere. */
    public double[] densify(double[] w) {
        if (w.length != weightNumel()) {
            throw new IllegalArgumentException("compressed weight has " + w.length + " elements, layout " + this + " needs "
                    + weightNumel());
        }
        int bs = blockSize;
        double[] d = new double[rows() * cols()];
        for (int r = 0; r < rowBlocks; r++) {
            for (int b = rowPtr[r]; b < rowPtr[r + 1]; b++) {
                for (int i = 0; i < bs; i++) {
                    for (int j = 0; j < bs; j++) {
                        d[(r * bs + i) * cols() + colIdx[b] * bs + j] = w[(b * bs + i) * bs + j];
                    }
                }
            }
        }
        return d;
    }

    @Override
    public String toString() {
        return "BlockLayout[" + rowBlocks + "x" + colBlocks + " blocks of " + blockSize + ", nnz " + nnz() + "]";
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof BlockLayout l && l.blockSize == blockSize && l.rowBlocks == rowBlocks && l.colBlocks == colBlocks
                && Arrays.equals(l.rowPtr, rowPtr) && Arrays.equals(l.colIdx, colIdx);
    }

    @Override
    public int hashCode() {
        return 31 * (31 * (31 * blockSize + rowBlocks) + colBlocks) + Arrays.hashCode(colIdx);
    }
}
