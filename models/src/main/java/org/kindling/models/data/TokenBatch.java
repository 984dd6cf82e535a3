package org.kindling.models.data;

/**
 * Packed variable-length token sequences, as data-prep's Arrow shards hold them: token ids and
 * the offsets of each sequence (exactly the Arrow list offsets). The target of token i is token
 * i+1 of the same sequence; the last token of a sequence has none.
 *
 * @param tokens ids, all sequences back to back
 * @param cuSeqlens B+1 offsets, from 0 to tokens.length
 * @param lossMask optional: lossMask[j] says whether token j is predicted (counts in the loss)
 */
public record TokenBatch(int[] tokens, int[] cuSeqlens, boolean[] lossMask) {
    /** Target id used for positions that predict nothing. */
    public static final int IGNORE = -100;

    public TokenBatch {
        if (cuSeqlens.length < 2 || cuSeqlens[0] != 0 || cuSeqlens[cuSeqlens.length - 1] != tokens.length) {
            throw new IllegalArgumentException("cu_seqlens must run from 0 to the token count " + tokens.length);
        }
        for (int i = 1; i < cuSeqlens.length; i++) {
            if (cuSeqlens[i] < cuSeqlens[i - 1]) {
                throw new IllegalArgumentException("cu_seqlens[" + i + "] = " + cuSeqlens[i] + " is less than cu_seqlens["
                        + (i - 1) + "] = " + cuSeqlens[i - 1]);
            }
        }
        if (lossMask != null && lossMask.length != tokens.length) {
            throw new IllegalArgumentException("loss mask has " + lossMask.length + " entries for " + tokens.length + " tokens");
        }
    }

    public TokenBatch(int[] tokens, int[] cuSeqlens) {
        this(tokens, cuSeqlens, null);
    }

    /** One sequence holding all the tokens. */
    public static TokenBatch single(int... tokens) {
        return new TokenBatch(tokens, new int[] {0, tokens.length});
    }

    public int size() {
        return tokens.length;
    }

    public int sequences() {
        return cuSeqlens.length - 1;
    }

    /** Next-token targets, {@link #IGNORE} at sequence ends and where the mask says so. */
    public int[] targets() {
        int[] t = new int[tokens.length];
        for (int b = 0; b + 1 < cuSeqlens.length; b++) {
            for (int i = cuSeqlens[b]; i < cuSeqlens[b + 1]; i++) {
                boolean last = i + 1 == cuSeqlens[b + 1];
                t[i] = last || (lossMask != null && !lossMask[i + 1]) ? IGNORE : tokens[i + 1];
            }
        }
        return t;
    }

    /** Position of every token inside its sequence. */
    public int[] positions() {
        int[] p = new int[tokens.length];
        for (int b = 0; b + 1 < cuSeqlens.length; b++) {
            for (int i = cuSeqlens[b]; i < cuSeqlens[b + 1]; i++) {
                p[i] = i - cuSeqlens[b];
            }
        }
        return p;
    }

    /** Tokens that have a target. */
    public int predicted() {
        int n = 0;
        for (int t : targets()) {
            n += t == IGNORE ? 0 : 1;
        }
        return n;
    }
}
