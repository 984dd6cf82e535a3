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

    /**
     * This batch as {@code parts} batches of whole, consecutive sequences with about as many tokens
     * each (each boundary is the first sequence start at or past its share of the tokens), so
     * that data-parallel replicas can each train on one. A part gets at least one sequence while
     * there are sequences left; with fewer sequences than parts the last parts are empty.
     * {@code split(1)} is this batch.
     */
    public TokenBatch[] split(int parts) {
        if (parts < 1) {
            throw new IllegalArgumentException("cannot split a batch into " + parts + " parts");
        }
        if (parts == 1) {
            return new TokenBatch[] {this};
        }
        int seqs = sequences();
        TokenBatch[] out = new TokenBatch[parts];
        int from = 0;
        for (int p = 0; p < parts; p++) {
            int to = seqs;
            if (p + 1 < parts) {
                long share = (long) tokens.length * (p + 1) / parts;
                to = from;
                while (to < seqs && cuSeqlens[to] < share) {
                    to++;
                }
                // Leave a sequence for each later part while there are enough; take one while any are left.
                to = Math.min(to, Math.max(from, seqs - (parts - 1 - p)));
                to = Math.max(to, Math.min(from + 1, seqs));
            }
            int a = cuSeqlens[from];
            int b = cuSeqlens[to];
            int[] cu = new int[to - from + 1];
            for (int s = from; s <= to; s++) {
                cu[s - from] = cuSeqlens[s] - a;
            }
            if (cu.length == 1) {
                cu = new int[] {0, 0};
            }
            out[p] = new TokenBatch(java.util.Arrays.copyOfRange(tokens, a, b), cu,
                    lossMask == null ? null : java.util.Arrays.copyOfRange(lossMask, a, b));
            from = to;
        }
        return out;
    }

    /**
     * This batch grown to {@code tokens} tokens by padding sequences after its own (token 0, no
     * target, each at most {@code maxSeq} long; {@code maxSeq} < 1: one), so that every micro-batch of
     * a pipeline step has one shape. The padding is a sequence of its own, so no real token attends
     * to it, and it predicts nothing, so the loss and gradients are this batch's. A batch already that
     * long is returned as it is.
     */
    public TokenBatch padded(int tokens, int maxSeq) {
        int n = this.tokens.length;
        if (n > tokens) {
            throw new IllegalArgumentException("a batch of " + n + " tokens cannot be padded to " + tokens);
        }
        if (n == tokens) {
            return this;
        }
        int piece = maxSeq < 1 ? tokens - n : maxSeq;
        int real = sequences() == 1 && cuSeqlens[1] == 0 ? 0 : sequences();
        int pads = (tokens - n + piece - 1) / piece;
        int[] cu = new int[real + pads + 1];
        System.arraycopy(cuSeqlens, 0, cu, 0, real + 1);
        for (int i = 1; i <= pads; i++) {
            cu[real + i] = Math.min(tokens, n + i * piece);
        }
        boolean[] mask = new boolean[tokens];
        for (int i = 0; i < n; i++) {
            mask[i] = lossMask == null || lossMask[i];
        }
        return new TokenBatch(java.util.Arrays.copyOf(this.tokens, tokens), cu, mask);
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
