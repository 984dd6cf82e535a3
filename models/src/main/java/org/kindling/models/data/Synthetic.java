package org.kindling.models.data;

import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import org.kindling.models.Gpt;

/**
 * The synthetic language tasks of the H3 paper (Fu et al. 2023, §3), which probe whether a token
 * mixer can recall and copy in context. Every example is one sequence whose last token is the
 * answer; the accuracy is that of predicting it from everything before.
 */
public final class Synthetic {
    /** Which task. */
    public enum Task {
        /** k₁ v₁ k₂ v₂ … q → the value that went with key q (keys: first half of the vocab, values: second). */
        ASSOCIATIVE_RECALL,
        /** random tokens with a marker s followed by x somewhere; the sequence ends with s → x. */
        INDUCTION_HEAD;

        public static Task parse(String name) {
            return switch (name) {
                case "associative-recall" -> ASSOCIATIVE_RECALL;
                case "induction-head" -> INDUCTION_HEAD;
                default -> throw new IllegalArgumentException("unknown task \"" + name
                        + "\"; known: associative-recall, induction-head");
            };
        }

        public String cliName() {
            return this == ASSOCIATIVE_RECALL ? "associative-recall" : "induction-head";
        }
    }

    /**
     * Examples of a task and the positions the loss trains on.
     *
     * @param sequences one int[] per example, the answer last
     * @param trained per example, which tokens are targets during training
     */
    public record Examples(Task task, int vocab, List<int[]> sequences, List<boolean[]> trained) {
        public int size() {
            return sequences.size();
        }

        /** Examples [from, to) packed as one batch. */
        public TokenBatch batch(int from, int to) {
            int total = 0;
            for (int i = from; i < to; i++) {
                total += sequences.get(i).length;
            }
            int[] tokens = new int[total];
            boolean[] mask = new boolean[total];
            int[] cu = new int[to - from + 1];
            int off = 0;
            for (int i = from; i < to; i++) {
                int[] s = sequences.get(i);
                System.arraycopy(s, 0, tokens, off, s.length);
                System.arraycopy(trained.get(i), 0, mask, off, s.length);
                off += s.length;
                cu[i - from + 1] = off;
            }
            return new TokenBatch(tokens, cu, mask);
        }
    }

    private Synthetic() {
    }

    public static Examples generate(Task task, int vocab, int seqLen, int count, long seed) {
        return switch (task) {
            case ASSOCIATIVE_RECALL -> associativeRecall(vocab, seqLen, count, seed);
            case INDUCTION_HEAD -> inductionHead(vocab, seqLen, count, seed);
        };
    }

    /**
     * Each example draws a fresh key→value map, lists (seqLen−2)/2 random key-value pairs, then
     * queries a key that appeared. Training targets are every value (predictable once its key was
     * seen) and the answer.
     */
    public static Examples associativeRecall(int vocab, int seqLen, int count, long seed) {
        if (vocab < 4 || vocab % 2 != 0) {
            throw new IllegalArgumentException("associative recall needs an even vocab of at least 4, got " + vocab);
        }
        if (seqLen < 4 || seqLen % 2 != 0) {
            throw new IllegalArgumentException("associative recall needs an even sequence length of at least 4, got " + seqLen);
        }
        int keys = vocab / 2;
        SplittableRandom r = new SplittableRandom(seed);
        List<int[]> seqs = new ArrayList<>();
        List<boolean[]> masks = new ArrayList<>();
        for (int e = 0; e < count; e++) {
            int[] map = new int[keys];
            for (int k = 0; k < keys; k++) {
                map[k] = keys + r.nextInt(keys);
            }
            int[] s = new int[seqLen];
            boolean[] m = new boolean[seqLen];
            int pairs = (seqLen - 2) / 2;
            for (int p = 0; p < pairs; p++) {
                int k = r.nextInt(keys);
                s[2 * p] = k;
                s[2 * p + 1] = map[k];
                m[2 * p + 1] = true;
            }
            int query = s[2 * r.nextInt(pairs)];
            s[seqLen - 2] = query;
            s[seqLen - 1] = map[query];
            m[seqLen - 1] = true;
            seqs.add(s);
            masks.add(m);
        }
        return new Examples(Task.ASSOCIATIVE_RECALL, vocab, seqs, masks);
    }

    /**
     * Random tokens from [0, vocab−1); the marker vocab−1 appears once followed by x, and again at
     * the end: the answer is x. Only the answer is a training target.
     */
    public static Examples inductionHead(int vocab, int seqLen, int count, long seed) {
        if (vocab < 3 || seqLen < 4) {
            throw new IllegalArgumentException("induction head needs vocab >= 3 and seqLen >= 4, got " + vocab + ", " + seqLen);
        }
        int marker = vocab - 1;
        SplittableRandom r = new SplittableRandom(seed);
        List<int[]> seqs = new ArrayList<>();
        List<boolean[]> masks = new ArrayList<>();
        for (int e = 0; e < count; e++) {
            int[] s = new int[seqLen];
            for (int i = 0; i < seqLen; i++) {
                s[i] = r.nextInt(marker);
            }
            int at = r.nextInt(seqLen - 3);
            s[at] = marker;
            s[seqLen - 2] = marker;
            s[seqLen - 1] = s[at + 1];
            boolean[] m = new boolean[seqLen];
            m[seqLen - 1] = true;
            seqs.add(s);
            masks.add(m);
        }
        return new Examples(Task.INDUCTION_HEAD, vocab, seqs, masks);
    }

    /** Fraction of examples whose answer is the model's argmax prediction from the tokens before it. */
    public static double accuracy(Gpt model, Examples examples, int batchSize) {
        int correct = 0;
        int vocab = model.config().vocab();
        for (int from = 0; from < examples.size(); from += batchSize) {
            int to = Math.min(examples.size(), from + batchSize);
            TokenBatch batch = examples.batch(from, to);
            float[] logits = model.logits(batch).toFloatArray();
            for (int i = from; i < to; i++) {
                int end = batch.cuSeqlens()[i - from + 1];
                int row = end - 2;
                int best = 0;
                for (int v = 1; v < vocab; v++) {
                    if (logits[row * vocab + v] > logits[row * vocab + best]) {
                        best = v;
                    }
                }
                correct += best == batch.tokens()[end - 1] ? 1 : 0;
            }
        }
        return correct / (double) examples.size();
    }

    /** An endless source of fresh examples: batch p is generated from (seed, p), so it never repeats and resumes exactly. */
    public static DataSource stream(Task task, int vocab, int seqLen, int batchSize, long seed) {
        return stream(task, vocab, seqLen, batchSize, seed, 0, batchSize);
    }

    /** Examples [from, to) of each batch of {@link #stream}: one data-parallel replica's slice. */
    public static DataSource stream(Task task, int vocab, int seqLen, int batchSize, long seed, int from, int to) {
        generate(task, vocab, seqLen, 1, seed); // validates the arguments now, not at the first batch
        if (from < 0 || to > batchSize || from >= to) {
            throw new IllegalArgumentException("slice [" + from + ", " + to + ") is not inside a batch of " + batchSize);
        }
        return DataSource.indexed(p -> generate(task, vocab, seqLen, batchSize, seed * 1_000_003L + p).batch(from, to));
    }

    /** A data source cycling through the training examples in batches of {@code batchSize}. */
    public static DataSource source(Examples examples, int batchSize) {
        int batches = examples.size() / batchSize;
        if (batches == 0) {
            throw new IllegalArgumentException(examples.size() + " examples do not fill a batch of " + batchSize);
        }
        return DataSource.indexed(p -> {
            int b = (int) (p % batches);
            return examples.batch(b * batchSize, (b + 1) * batchSize);
        });
    }
}
