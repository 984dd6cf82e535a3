package org.kindling.data;

import java.util.Arrays;

/**
 * The BPE merge table: (left id, right id) → rank in the high 32 bits, merged id in the low 32, in
 * open addressing over primitive arrays. Encoding looks up every adjacent pair of every new piece,
 * so this is the tokenizer's inner loop: a {@code HashMap<Long, Long>} boxes each key, and
 * {@link Long#hashCode} of a packed pair is {@code left ^ right}, which sends most pairs of a
 * vocabulary of a few thousand ids into a few thousand shared bins.
 */
final class MergeTable {
    /** No pair packs to −1: ids are non-negative. */
    static final long ABSENT = -1;

    private final long[] keys;
    private final long[] values;
    private final int mask;

    /** @param capacity pairs to hold; the table stays at most half full */
    MergeTable(int capacity) {
        int slots = Integer.highestOneBit(Math.max(2, capacity) * 2 - 1) << 1;
        keys = new long[slots];
        values = new long[slots];
        Arrays.fill(keys, ABSENT);
        mask = slots - 1;
    }

    static long pair(int left, int right) {
        return ((long) left << 32) | (right & 0xffffffffL);
    }

    /** Adds a pair unless it is present (the first merge of a pair wins, as the lowest rank does). */
    void putIfAbsent(long pair, long value) {
        int i = slot(pair);
        while (keys[i] != ABSENT) {
            if (keys[i] == pair) {
                return;
            }
            i = (i + 1) & mask;
        }
        keys[i] = pair;
        values[i] = value;
    }

    /** The value of {@code pair}, or {@link #ABSENT}. */
    long get(long pair) {
        int i = slot(pair);
        while (true) {
            long k = keys[i];
            if (k == pair) {
                return values[i];
            }
            if (k == ABSENT) {
                return ABSENT;
            }
            i = (i + 1) & mask;
        }
    }

    /** MurmurHash3's 64-bit finalizer: every key bit moves every slot bit. */
    private int slot(long key) {
        long h = key;
        h ^= h >>> 33;
        h *= 0xff51afd7ed558ccdL;
        h ^= h >>> 33;
        h *= 0xc4ceb9fe1a85ec53L;
        h ^= h >>> 33;
        return (int) h & mask;
    }
}
