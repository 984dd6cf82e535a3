package org.kindling.ops;

/**
 * The routing layout of a dropless mixture of experts (MegaBlocks): indices [N] I32 name an expert
 * in [0, E) for each of the N = T·k (token, choice) entries, offsets [E + 1] I32 is the exclusive
 * prefix sum of their histogram, and order [N] I32 lists the entries grouped by expert, each
 * expert's in entry order: order[offsets[e] + r] = the r-th entry routed to e. Gathering rows by
 * order makes each expert's rows contiguous for a grouped GEMM; {@link Backend#scatterAddRows}
 * with the same order undoes it. With a capacity (Switch Transformer), {@link Backend#capacitySlots}
 * lays each expert's first {@code capacity} entries into fixed slots and marks the rest empty
 * (−1); {@link Backend#entryTokens} turns entries (t·k + j) into token rows, keeping −1, which
 * gather and scatter-add treat as an empty slot. Checked the same way by every backend.
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

    /** Checks the operands of {@link Backend#entryTokens}: I32 rows and entries of one length, k ≥ 1. */
    public static void checkEntryTokens(Tensor rows, Tensor entries, int k) {
        if (k < 1) {
            throw new IllegalArgumentException("entryTokens k must be ≥ 1, got " + k);
        }
        i32(rows, "entryTokens rows");
        i32(entries, "entryTokens entries");
        KernelChecks.sameNumel(rows, "entryTokens rows", entries, "entries");
    }

    /** Each of the n entries from {@code off} must be an entry id (≥ 0) or −1, an empty slot. */
    public static void checkEntries(int[] entries, int off, int n, String what) {
        for (int i = 0; i < n; i++) {
            if (entries[off + i] < -1) {
                throw new IllegalArgumentException(what + "[" + i + "] = " + entries[off + i]
                        + " is neither an entry (≥ 0) nor −1 (an empty slot)");
            }
        }
    }

    /**
     * Checks the operands of {@link Backend#capacitySlots}: slots [E·capacity], order [N] and
     * offsets [E + 1], all I32, capacity ≥ 1; E is offsets' length − 1.
     */
    public static MoeRouting checkCapacity(Tensor slots, Tensor order, Tensor offsets, int capacity) {
        if (capacity < 1) {
            throw new IllegalArgumentException("capacitySlots capacity must be ≥ 1, got " + capacity);
        }
        i32(slots, "capacitySlots slots");
        i32(order, "capacitySlots order");
        i32(offsets, "capacitySlots offsets");
        if (offsets.numel() < 2) {
            throw new IllegalArgumentException("capacitySlots offsets " + offsets + " must hold E + 1 ≥ 2 values");
        }
        int experts = offsets.numel() - 1;
        if ((long) experts * capacity != slots.numel()) {
            throw new IllegalArgumentException("capacitySlots slots " + slots + " must hold E·capacity = " + experts
                    + "·" + capacity + " values");
        }
        return new MoeRouting(order.numel(), experts);
    }

    /**
     * The E + 1 offsets from {@code off} must run from 0 to N without decreasing: otherwise an
     * expert's range would reach outside order.
     */
    public void checkOffsetsRange(int[] offsets, int off, String what) {
        if (offsets[off] != 0) {
            throw new IllegalArgumentException(what + "[0] = " + offsets[off] + " must be 0");
        }
        for (int e = 1; e <= experts; e++) {
            if (offsets[off + e] < offsets[off + e - 1]) {
                throw new IllegalArgumentException(what + "[" + e + "] = " + offsets[off + e] + " is below "
                        + what + "[" + (e - 1) + "] = " + offsets[off + e - 1]);
            }
        }
        if (offsets[off + experts] != entries) {
            throw new IllegalArgumentException(what + "[" + experts + "] = " + offsets[off + experts]
                    + " must be the number of entries in order, " + entries);
        }
    }

    private static void i32(Tensor t, String what) {
        if (t.dtype() != DType.I32) {
            throw new IllegalArgumentException(what + " must be I32, got " + t);
        }
    }
}
