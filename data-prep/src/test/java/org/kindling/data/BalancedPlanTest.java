package org.kindling.data;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.api.Test;

/** The epoch plan alone: chunk order and lengths in, every rank's batches out. */
class BalancedPlanTest {
    private static int[] identity(int n) {
        int[] order = new int[n];
        Arrays.setAll(order, i -> i);
        return order;
    }

    @Test
    void oneRankPacksGreedilyInOrder() {
        int[] length = {5, 3, 4, 2, 6};
        List<int[][]> steps = BalancedPlan.steps(identity(5), length, 1, 10);
        assertEquals(3, steps.size());
        assertArrayEquals(new int[] {0, 1}, steps.get(0)[0]);
        assertArrayEquals(new int[] {2, 3}, steps.get(1)[0]);
        assertArrayEquals(new int[] {4}, steps.get(2)[0]);
    }

    @Test
    void longChunksSpreadOverTheRanks() {
        // Permuted order puts both long chunks first: dealt longest first they go to different ranks.
        int[] length = {40, 40, 5, 5, 5, 5, 5, 5, 5, 5};
        int[][] step = BalancedPlan.steps(identity(10), length, 2, 64).get(0);
        long[] tokens = new long[2];
        for (int r = 0; r < 2; r++) {
            for (int c : step[r]) {
                tokens[r] += length[c];
            }
        }
        assertEquals(60, tokens[0]);
        assertEquals(60, tokens[1]);
        assertTrue(Arrays.stream(step[0]).anyMatch(c -> c < 2) && Arrays.stream(step[1]).anyMatch(c -> c < 2));
    }

    @Test
    void aLastStepWithFewerChunksThanRanksTakesOneFromAnEarlierBatch() {
        int[] length = {6, 6, 6, 6, 6};
        List<int[][]> steps = BalancedPlan.steps(identity(5), length, 2, 12);
        assertEquals(2, steps.size());
        boolean[] seen = new boolean[5];
        for (int[][] step : steps) {
            for (int[] batch : step) {
                assertTrue(batch.length > 0, "an empty batch");
                int tokens = 0;
                for (int c : batch) {
                    assertTrue(!seen[c], "chunk " + c + " twice");
                    seen[c] = true;
                    tokens += length[c];
                }
                assertTrue(tokens <= 12);
            }
        }
        for (boolean s : seen) {
            assertTrue(s, "every chunk is in the epoch");
        }
    }

    /** Five chunks of 6 for 2 ranks of budget 10: no batch ever holds two, so the last step leaves a rank empty. */
    @Test
    void chunksTooLongToShareLeaveTheLastStepsOtherRankEmpty() {
        List<int[][]> steps = BalancedPlan.steps(identity(5), new int[] {6, 6, 6, 6, 6}, 2, 10);
        assertEquals(3, steps.size());
        int[][] last = steps.get(2);
        assertEquals(1, last[0].length + last[1].length, "one chunk, one empty batch");
        int chunks = 0;
        for (int[][] step : steps) {
            chunks += step[0].length + step[1].length;
        }
        assertEquals(5, chunks, "every chunk once");
    }
}
