package org.kindling.models.data;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.Arrays;
import org.junit.jupiter.api.Test;

/** A task's batch split across its replicas: whole consecutive sequences, balanced by tokens, nothing lost. */
class TokenBatchSplitTest {
    private static TokenBatch lengths(int... lens) {
        int[] cu = new int[lens.length + 1];
        for (int i = 0; i < lens.length; i++) {
            cu[i + 1] = cu[i] + lens[i];
        }
        int[] tokens = new int[cu[lens.length]];
        for (int i = 0; i < tokens.length; i++) {
            tokens[i] = i;
        }
        boolean[] mask = new boolean[tokens.length];
        for (int i = 0; i < mask.length; i++) {
            mask[i] = i % 3 != 0;
        }
        return new TokenBatch(tokens, cu, mask);
    }

    private static String shape(TokenBatch[] parts) {
        StringBuilder sb = new StringBuilder();
        for (TokenBatch p : parts) {
            sb.append(Arrays.toString(p.cuSeqlens()));
        }
        return sb.toString();
    }

    @Test
    void equalSequencesSplitEvenlyAndKeepTokensAndMask() {
        TokenBatch b = lengths(4, 4, 4, 4);
        TokenBatch[] parts = b.split(2);
        assertEquals("[0, 4, 8][0, 4, 8]", shape(parts));
        assertArrayEquals(new int[] {8, 9, 10, 11, 12, 13, 14, 15}, parts[1].tokens());
        assertArrayEquals(Arrays.copyOfRange(b.lossMask(), 8, 16), parts[1].lossMask());
        assertEquals(b.predicted(), parts[0].predicted() + parts[1].predicted());
        assertSame(b, b.split(1)[0]);
    }

    @Test
    void unevenSequencesBalanceTokensAtSequenceBoundaries() {
        assertEquals("[0, 10][0, 1, 2, 3, 4, 5]", shape(lengths(10, 1, 1, 1, 1, 1).split(2)));
        assertEquals("[0, 3, 6][0, 3][0, 3]", shape(lengths(3, 3, 3, 3).split(3)));
        assertEquals("[0, 5][0, 5][0, 1]", shape(lengths(5, 5, 1).split(3)));
    }

    @Test
    void fewerSequencesThanPartsLeavesTheLastPartsEmpty() {
        TokenBatch[] parts = lengths(7).split(3);
        assertEquals("[0, 7][0, 0][0, 0]", shape(parts));
        assertEquals(0, parts[2].size());
        assertThrows(IllegalArgumentException.class, () -> lengths(7).split(0));
    }
}
