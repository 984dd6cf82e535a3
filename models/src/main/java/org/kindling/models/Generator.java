package org.kindling.models;

import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import org.kindling.ops.Tensor;

/** Sampling text (token ids) from a model with KV-cache incremental decoding. Seeded and deterministic. */
public final class Generator {
    private final Gpt model;

    public Generator(Gpt model) {
        this.model = model;
    }

    /**
     * Continues {@code prompt} by up to {@code maxNewTokens} tokens. An empty prompt starts from
     * {@code endOfText}, as GPT-2 does; generation stops early after producing {@code endOfText}
     * (pass −1 for no stop token). Returns only the new tokens.
     */
    public int[] generate(int[] prompt, int maxNewTokens, Sampling sampling, long seed, int endOfText) {
        if (maxNewTokens < 0) {
            throw new IllegalArgumentException("max new tokens must be >= 0, got " + maxNewTokens);
        }
        int[] start = prompt.length > 0 ? prompt : new int[] {endOfText};
        if (start[0] < 0) {
            throw new IllegalArgumentException("an empty prompt needs the end-of-text token id to start from");
        }
        int maxSeq = model.config().maxSeq();
        if (start.length + maxNewTokens > maxSeq + 1) {
            throw new IllegalArgumentException("prompt of " + start.length + " tokens plus " + maxNewTokens
                    + " new ones exceeds the model's max_seq " + maxSeq);
        }
        SplittableRandom rnd = new SplittableRandom(seed);
        int vocab = model.config().vocab();
        int[] out = new int[maxNewTokens];
        int produced = 0;
        List<DecodeState> states = model.newDecodeStates();
        try {
            Tensor logits = model.forwardStep(start, states);
            while (produced < maxNewTokens) {
                float[] last = logits.view((logits.rows() - 1) * vocab, vocab).toFloatArray();
                int next = sampling.pick(last, rnd);
                out[produced++] = next;
                if (next == endOfText || produced == maxNewTokens) {
                    break;
                }
                logits = model.forwardStep(new int[] {next}, states);
            }
        } finally {
            states.forEach(DecodeState::close);
        }
        return Arrays.copyOf(out, produced);
    }
}
