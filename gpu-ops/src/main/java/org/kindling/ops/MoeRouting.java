package org.kindling.ops;

/**
 * The routing layout of a dropless mixture of experts (MegaBlocks): indices [N] I32 name an expert
 * in [0, E) for each of the N = T·k (token, choice) entries, offsets [E + 1] I32 is the exclusive
 * prefix sum of their histogram, and order [N] I32 lists the entries grouped by expert, each
 * expert's in entry order: order[offsets[e] + r] = the r-th entry routed to e. Gathering rows by
 * order makes each expert's rows contiguous for a grouped GEMM; {@link Backend#scatterAddRows}
 * with the same order undoes it. Checked the same way by every backend.
 *
 * @param entries N
 * @param experts E
 */
public record MoeRouting(int entries, int experts) {

    /** Checks the operands of {@link Backend#expertOffsets}. */
    public static MoeRouting checkOffsets(Tensor offsets, Tensor indices, int experts) {
        if (experts < 1) {
            throw new IllegalArgumentException("expertOffsets experts must be ≥ 1, got " + experts);
        }
        i32(indices, "expertOffsets indices");
        i32(offsets, "expertOffsets offsets");
        KernelChecks.numel(offsets, "expertOffsets offsets (E + 1)", experts + 1);
        return new MoeRouting(indices.numel(), experts);
    }

    /** Checks the operands of {@link Backend#permutation}; E is offsets' length − 1. */
    public static MoeRouting checkPermutation(Tensor order, Tensor indices, Tensor offsets) {
        i32(order, "permutation order");
        i32(indices, "permutation indices");
        i32(offsets, "permutation offsets");
        if (offsets.numel() < 2) {
            throw new IllegalArgumentException("permutation offsets " + offsets + " must hold E + 1 ≥ 2 values");
        }
        KernelChecks.sameNumel(order, "permutation order", indices, "indices");
        return new MoeRouting(indices.numel(), offsets.numel() - 1);
    }

    /** Entries per expert of the n ids from {@code off}, each checked to be in [0, E). */
    public int[] counts(int[] ids, int off, String what) {
        KernelChecks.checkIds(ids, off, entries, experts, what);
        int[] counts = new int[experts];
        for (int i = 0; i < entries; i++) {
            counts[ids[off + i]]++;
        }
        return counts;
    }

    /**
     * The E + 1 offsets from {@code off} must be the prefix sum of {@code counts}: a permutation
     * built from any other offsets would write outside an expert's range.
     */
    public void checkOffsetsMatch(int[] offsets, int off, int[] counts) {
        int sum = 0;
        for (int e = 0; e <= experts; e++) {
            if (offsets[off + e] != sum) {
                throw new IllegalArgumentException("permutation offsets[" + e + "] = " + offsets[off + e]
                        + " but the indices put " + sum + " entries before expert " + e);
            }
            if (e < experts) {
                sum += counts[e];
            }
        }
    }

    private static void i32(Tensor t, String what) {
        if (t.dtype() != DType.I32) {
            throw new IllegalArgumentException(what + " must be I32, got " + t);
        }
    }
}
