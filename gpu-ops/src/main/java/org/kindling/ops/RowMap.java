package org.kindling.ops;

/**
 * The layout of {@link Backend#gatherRows} and {@link Backend#scatterAddRows}: a dense [R, C]
 * tensor (the tokens), a mapped [N, C] tensor (one row per routed entry) and rows [N] I32 in
 * [0, R) naming each mapped row's dense row, or −1 for an empty slot (an entry dropped past an
 * expert's capacity). Gather reads dense rows into mapped ones, zero rows into empty slots;
 * scatter-add adds mapped rows (optionally weighted) back into dense ones, skipping empty slots. Checked the same way by every backend.
 *
 * @param denseRows R
 * @param mappedRows N
 * @param channels C
 */
public record RowMap(int denseRows, int mappedRows, int channels) {

    /** Checks {@link Backend#gatherRows}: out [N, C] mapped, x [R, C] dense. */
    public static RowMap checkGather(Tensor out, Tensor x, Tensor rows) {
        RowMap m = of("gatherRows", out, "out", x, "x", rows);
        // Rows are copied one by one; an overlapping out would overwrite rows still to be read.
        if (out.storage() == x.storage() && out.offset() < x.offset() + x.numel()
                && x.offset() < out.offset() + out.numel()) {
            throw new IllegalArgumentException("gatherRows out " + out + " must not overlap x " + x);
        }
        return m;
    }

    /** Checks {@link Backend#scatterAddRows}: out [R, C] dense, x [N, C] mapped, weights [N] F32 or null. */
    public static RowMap checkScatter(Tensor out, Tensor x, Tensor rows, Tensor weights) {
        RowMap m = of("scatterAddRows", x, "x", out, "out", rows);
        if (weights != null && (weights.dtype() != DType.F32 || weights.numel() != m.mappedRows)) {
            throw new IllegalArgumentException("scatterAddRows weights " + weights + " must be F32 [" + m.mappedRows
                    + "] (one per row of x) or null");
        }
        if (out.storage() == x.storage() && out.offset() < x.offset() + x.numel()
                && x.offset() < out.offset() + out.numel()) {
            throw new IllegalArgumentException("scatterAddRows out " + out + " must not overlap x " + x);
        }
        return m;
    }

    /** Each of the N row ids from {@code off} must be a dense row in [0, R) or −1 (an empty slot). */
    public void checkRows(int[] rows, int off, String what) {
        for (int i = 0; i < mappedRows; i++) {
            int r = rows[off + i];
            if (r != -1 && (r < 0 || r >= denseRows)) {
                throw new IllegalArgumentException(what + "[" + i + "] = " + r + " is outside [0, " + denseRows
                        + ") and is not −1 (an empty slot)");
            }
        }
    }

    private static RowMap of(String op, Tensor mapped, String mn, Tensor dense, String dn, Tensor rows) {
        if (mapped.dtype() != DType.F32 || dense.dtype() != DType.F32) {
            throw new IllegalArgumentException(op + " " + mn + " " + mapped + " and " + dn + " " + dense + " must be F32");
        }
        if (rows.dtype() != DType.I32) {
            throw new IllegalArgumentException(op + " rows must be I32, got " + rows);
        }
        if (mapped.cols() != dense.cols()) {
            throw new IllegalArgumentException(op + " " + mn + " " + mapped + " must have " + dn + "'s " + dense.cols()
                    + " columns");
        }
        if (mapped.rows() != rows.numel()) {
            throw new IllegalArgumentException(op + " " + mn + " " + mapped + " must have one row per entry of rows "
                    + rows + " (" + rows.numel() + ")");
        }
        return new RowMap(dense.rows(), mapped.rows(), dense.cols());
    }
}
