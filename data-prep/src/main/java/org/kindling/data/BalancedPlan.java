package org.kindling.data;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * An epoch's batches for every rank, built so that the ranks' batches of a step carry nearly the
 * same work (see {@link DatasetReader}): a function of the chunk order and lengths only, so every
 * rank computes the same plan without reading a token.
 */
final class BalancedPlan {
    private BalancedPlan() {
    }

    /**
     * The steps of an epoch: {@code steps.get(s)[rank]} are the chunks of that rank's batch at step
     * s, in the order they come in {@code order}; every chunk of {@code order} is in exactly one
     * batch, every batch has at least one chunk and at most {@code budget} tokens.
     *
     * @param order the epoch's chunks, permuted
     * @param length every chunk's length in tokens (each at most {@code budget})
     * @throws IllegalArgumentException when fewer chunks than ranks are left for the last step and
     *     no earlier step has a batch of two chunks to give one of them (only possible when chunks
     *     are longer than half the budget)
     */
    static List<int[][]> steps(int[] order, int[] length, int world, int budget) {
        if (order.length < world) {
            throw new IllegalArgumentException(order.length + " chunks cannot give each of " + world + " ranks a batch");
        }
        long stepBudget = (long) world * budget;
        List<int[][]> steps = new ArrayList<>();
        int[] deferred = new int[0];
        int next = 0;
        // A step's candidates: the chunks the last step could not place, then the permutation's next.
        int[] group = new int[order.length];
        while (next < order.length || deferred.length > 0) {
            int size = 0;
            long tokens = 0;
            for (int c : deferred) {
                group[size++] = c;
                tokens += length[c];
            }
            while (next < order.length && tokens + length[order[next]] <= stepBudget) {
                tokens += length[order[next]];
                group[size++] = order[next++];
            }
            int[][] step = new int[world][];
            deferred = deal(Arrays.copyOf(group, size), length, world, budget, step);
            steps.add(step);
        }
        fillLast(steps, length);
        return steps;
    }

    /**
     * Deals a step's chunks longest first, each to the rank with the fewest tokens (then the least
     * Σ length², then the lowest rank) that has room for it; fills {@code step} with each rank's
     * chunks in {@code group}'s order and returns those no rank had room for, in that order.
     */
    private static int[] deal(int[] group, int[] length, int world, int budget, int[][] step) {
        Integer[] byLength = new Integer[group.length];
        for (int i = 0; i < group.length; i++) {
            byLength[i] = i;
        }
        // Stable: equal lengths keep the permutation's order, so the plan depends on nothing else.
        Arrays.sort(byLength, (a, b) -> Integer.compare(length[group[b]], length[group[a]]));
        long[] tokens = new long[world];
        double[] squares = new double[world];
        int[] rankOf = new int[group.length];
        int[] count = new int[world];
        int left = 0;
        for (int i : byLength) {
            int len = length[group[i]];
            int best = -1;
            for (int r = 0; r < world; r++) {
                if (tokens[r] + len <= budget && (best < 0 || tokens[r] < tokens[best]
                        || tokens[r] == tokens[best] && squares[r] < squares[best])) {
                    best = r;
                }
            }
            rankOf[i] = best;
            if (best < 0) {
                left++;
            } else {
                tokens[best] += len;
                squares[best] += (double) len * len;
                count[best]++;
            }
        }
        for (int r = 0; r < world; r++) {
            step[r] = new int[count[r]];
            count[r] = 0;
        }
        int[] deferred = new int[left];
        int d = 0;
        for (int i = 0; i < group.length; i++) {
            if (rankOf[i] < 0) {
                deferred[d++] = group[i];
            } else {
                step[rankOf[i]][count[rankOf[i]]++] = group[i];
            }
        }
        return deferred;
    }

    /** Chunks of two or more tokens first, shortest first; one-token chunks last. */
    private static long givingOrder(int length) {
        return length >= 2 ? length : Integer.MAX_VALUE + (long) length;
    }

    /**
     * Gives every rank of the last step a chunk where it can: the last step is the only one that can
     * have fewer chunks than ranks. Each empty batch takes the shortest chunk (of two or more tokens
     * where there is one) of the fullest batch of two or more chunks in the nearest earlier step; when
     * no earlier batch holds two (a budget below twice the longest chunk) the batch stays empty.
     */
    private static void fillLast(List<int[][]> steps, int[] length) {
        int[][] last = steps.get(steps.size() - 1);
        for (int r = 0; r < last.length; r++) {
            if (last[r].length > 0) {
                continue;
            }
            boolean found = false;
            for (int s = steps.size() - 2; s >= 0 && !found; s--) {
                int[][] step = steps.get(s);
                int donor = -1;
                long most = -1;
                for (int q = 0; q < step.length; q++) {
                    long t = tokens(step[q], length);
                    if (step[q].length > 1 && t > most) {
                        donor = q;
                        most = t;
                    }
                }
                if (donor >= 0) {
                    int[] batch = step[donor];
                    // The shortest chunk that predicts a token (two or more): a one-token chunk alone trains nothing.
                    int shortest = 0;
                    for (int i = 1; i < batch.length; i++) {
                        if (givingOrder(length[batch[i]]) < givingOrder(length[batch[shortest]])) {
                            shortest = i;
                        }
                    }
                    last[r] = new int[] {batch[shortest]};
                    int[] rest = new int[batch.length - 1];
                    System.arraycopy(batch, 0, rest, 0, shortest);
                    System.arraycopy(batch, shortest + 1, rest, shortest, rest.length - shortest);
                    step[donor] = rest;
                    found = true;
                }
            }
            // Without a donor (no earlier batch holds two chunks: a budget below twice the longest chunk) the rank
            // keeps its empty batch: it adds nothing to that step, which its peers' chunks carry.

        }
    }

    private static long tokens(int[] batch, int[] length) {
        long t = 0;
        for (int c : batch) {
            t += length[c];
        }
        return t;
    }
}
