package org.kindling.models.generate;

import java.util.Arrays;
import java.util.SplittableRandom;
import org.kindling.models.DecodeSession;
import org.kindling.models.Gpt;
import org.kindling.ops.Seeds;

/**
 * Sampling text (token ids) from a model by incremental decoding: every prompt of a batch is
 * prefilled and then continued one token per step, all sequences in one {@link DecodeSession}.
 * Seeded and deterministic; each sequence draws from its own stream, so a prompt's continuation
 * does not depend on the other prompts of its batch.
 */
public final class Generator {
    private final Gpt model;

    public Generator(Gpt model) {
        this.model = model;
    }

    /** {@link #generate(int[][], int, Sampling, long, int)} for one prompt. */
    public int[] generate(int[] prompt, int maxNewTokens, Sampling sampling, long seed, int endOfText) {
        return generate(new int[][] {prompt}, maxNewTokens, sampling, seed, endOfText)[0];
    }

    /**
     * Continues each prompt by up to {@code maxNewTokens} tokens. An empty prompt starts from
     * {@code endOfText}, as GPT-2 does; a sequence stops early after producing {@code endOfText}
     * (pass −1 for no stop token). Returns only the new tokens of each prompt.
     */
    public int[][] generate(int[][] prompts, int maxNewTokens, Sampling sampling, long seed, int endOfText) {
        if (maxNewTokens < 0) {
            throw new IllegalArgumentException("max new tokens must be >= 0, got " + maxNewTokens);
        }
        if (prompts.length == 0) {
            throw new IllegalArgumentException("generate needs at least one prompt");
        }
        int n = prompts.length;
        int[][] feed = new int[n][];
        for (int b = 0; b < n; b++) {
            feed[b] = prompts[b].length > 0 ? prompts[b] : new int[] {endOfText};
            if (feed[b][0] < 0) {
                throw new IllegalArgumentException("an empty prompt needs the end-of-text token id to start from");
            }
            if (model.config().limited() && feed[b].length + maxNewTokens > model.config().maxSeq() + 1) {
                throw new IllegalArgumentException("prompt " + b + " of " + feed[b].length + " tokens plus " + maxNewTokens
                        + " new ones exceeds the model's max_seq " + model.config().maxSeq());
            }
        }
        SplittableRandom[] rnd = new SplittableRandom[n];
        for (int b = 0; b < n; b++) {
            rnd[b] = new SplittableRandom(Seeds.derive(seed, b));
        }
        int[][] out = new int[n][maxNewTokens];
        int[] produced = new int[n];
        boolean[] done = new boolean[n];
        int live = maxNewTokens == 0 ? 0 : n;
        try (DecodeSession session = model.newSession(n)) {
            float[][] logits = live > 0 ? session.step(feed) : null;
            while (live > 0) {
                int[][] next = new int[n][];
                for (int b = 0; b < n; b++) {
                    next[b] = new int[0];
                    if (done[b]) {
                        continue;
                    }
                    int tok = sampling.pick(logits[b], rnd[b]);
                    out[b][produced[b]++] = tok;
                    if (tok == endOfText || produced[b] == maxNewTokens) {
                        done[b] = true;
                        live--;
                    } else {
                        next[b] = new int[] {tok};
                    }
                }
                if (live > 0) {
                    logits = session.step(next);
                }
            }
        }
        int[][] result = new int[n][];
        for (int b = 0; b < n; b++) {
            result[b] = Arrays.copyOf(out[b], produced[b]);
        }
        return result;
    }
}
