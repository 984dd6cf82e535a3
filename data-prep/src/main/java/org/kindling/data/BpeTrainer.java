package org.kindling.data;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.PriorityQueue;
import java.util.Set;
import java.util.TreeMap;

/**
 * Learns byte-level BPE merges from pre-token counts (which the prepare job aggregates over the
 * corpus with Spark). Starts from all 256 byte symbols, so any text can be encoded, and merges
 * the most frequent adjacent pair until the vocabulary is full. Ties go to the pair whose symbols
 * sort first, so the result depends only on the counts.
 */
public final class BpeTrainer {
    private BpeTrainer() {
    }

    /** Adds the pre-token counts of {@code text} to {@code counts}. */
    public static void count(String text, Map<String, Long> counts) {
        for (String piece : ByteLevel.preTokenize(text)) {
            counts.merge(piece, 1L, Long::sum);
        }
    }

    private record Candidate(long count, int a, int b) {
    }

    /**
     * Trains a tokenizer of {@code vocabSize} ids: 256 byte symbols, the learned merges, then the
     * special tokens (first {@link BpeTokenizer#END_OF_TEXT}), last.
     */
    public static BpeTokenizer train(Map<String, Long> preTokenCounts, int vocabSize, List<String> specials) {
        int base = 256 + specials.size();
        if (vocabSize < base) {
            throw new IllegalArgumentException("vocab size " + vocabSize + " is below the " + base
                    + " ids that byte symbols and special tokens need");
        }
        List<String> symbols = new ArrayList<>();
        Map<String, Integer> ids = new HashMap<>();
        for (int b = 0; b < 256; b++) {
            String s = String.valueOf(ByteLevel.symbol(b));
            ids.put(s, symbols.size());
            symbols.add(s);
        }
        // Words in sorted order, so pair bookkeeping never depends on hash order.
        TreeMap<String, Long> sorted = new TreeMap<>(preTokenCounts);
        int nWords = sorted.size();
        int[][] words = new int[nWords][];
        long[] counts = new long[nWords];
        int w = 0;
        for (Map.Entry<String, Long> e : sorted.entrySet()) {
            String sym = ByteLevel.toSymbols(e.getKey());
            words[w] = new int[sym.length()];
            for (int i = 0; i < sym.length(); i++) {
                words[w][i] = ids.get(String.valueOf(sym.charAt(i)));
            }
            counts[w++] = e.getValue();
        }
        Map<Long, Long> pairCounts = new HashMap<>();
        Map<Long, Set<Integer>> where = new HashMap<>();
        for (int i = 0; i < nWords; i++) {
            for (int j = 0; j + 1 < words[i].length; j++) {
                long key = key(words[i][j], words[i][j + 1]);
                pairCounts.merge(key, counts[i], Long::sum);
                where.computeIfAbsent(key, k -> new HashSet<>()).add(i);
            }
        }
        PriorityQueue<Candidate> queue = new PriorityQueue<>((x, y) -> {
            if (x.count() != y.count()) {
                return Long.compare(y.count(), x.count());
            }
            int c = symbols.get(x.a()).compareTo(symbols.get(y.a()));
            return c != 0 ? c : symbols.get(x.b()).compareTo(symbols.get(y.b()));
        });
        pairCounts.forEach((k, c) -> queue.add(new Candidate(c, (int) (k >>> 32), (int) (long) k)));
        List<String[]> merges = new ArrayList<>();
        int target = vocabSize - specials.size();
        while (symbols.size() < target && !queue.isEmpty()) {
            Candidate top = queue.poll();
            long key = key(top.a(), top.b());
            long current = pairCounts.getOrDefault(key, 0L);
            if (current != top.count()) {
                if (current > 0) {
                    queue.add(new Candidate(current, top.a(), top.b()));
                }
                continue;
            }
            String merged = symbols.get(top.a()) + symbols.get(top.b());
            int id = ids.computeIfAbsent(merged, s -> {
                symbols.add(s);
                return symbols.size() - 1;
            });
            merges.add(new String[] {symbols.get(top.a()), symbols.get(top.b())});
            Set<Long> touched = new HashSet<>();
            for (int i : where.getOrDefault(key, Set.of())) {
                int[] old = words[i];
                int[] next = mergeWord(old, top.a(), top.b(), id);
                if (next == old) {
                    continue;
                }
                for (int j = 0; j + 1 < old.length; j++) {
                    pairCounts.merge(key(old[j], old[j + 1]), -counts[i], Long::sum);
                }
                for (int j = 0; j + 1 < next.length; j++) {
                    long k = key(next[j], next[j + 1]);
                    pairCounts.merge(k, counts[i], Long::sum);
                    where.computeIfAbsent(k, x -> new HashSet<>()).add(i);
                    touched.add(k);
                }
                words[i] = next;
            }
            pairCounts.remove(key);
            where.remove(key);
            for (long k : touched) {
                long c = pairCounts.getOrDefault(k, 0L);
                if (c > 0) {
                    queue.add(new Candidate(c, (int) (k >>> 32), (int) k));
                }
            }
        }
        Map<String, Integer> vocab = new LinkedHashMap<>();
        for (int i = 0; i < symbols.size(); i++) {
            vocab.put(symbols.get(i), i);
        }
        Map<String, Integer> special = new LinkedHashMap<>();
        for (String s : specials) {
            if (vocab.containsKey(s) || special.containsKey(s)) {
                throw new IllegalArgumentException("special token " + s + " is already in the vocabulary");
            }
            special.put(s, symbols.size() + special.size());
        }
        return new BpeTokenizer(vocab, merges, special);
    }

    private static long key(int a, int b) {
        return ((long) a << 32) | (b & 0xffffffffL);
    }

    /** The word with every non-overlapping (a, b), left to right, replaced by id; the same array if none. */
    private static int[] mergeWord(int[] word, int a, int b, int id) {
        int[] out = null;
        int n = 0;
        for (int j = 0; j < word.length; j++) {
            if (j + 1 < word.length && word[j] == a && word[j + 1] == b) {
                if (out == null) {
                    out = new int[word.length - 1];
                    System.arraycopy(word, 0, out, 0, j);
                    n = j;
                }
                out[n++] = id;
                j++;
            } else if (out != null) {
                out[n++] = word[j];
            }
        }
        return out == null ? word : java.util.Arrays.copyOf(out, n);
    }
}
