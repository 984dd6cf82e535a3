package org.kindling.models.nn;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

class FlatButterflyTest {
    @Test
    void squareLayoutIsTheXorRuleWithNTimesLogKPlusOneBlocks() {
        for (int k : new int[] {1, 2, 4, 16}) {
            for (int n : new int[] {k, 2 * k, 4 * k}) {
                int log = Integer.numberOfTrailingZeros(k);
                boolean[][] m = FlatButterfly.layout(n, n, k, log);
                for (int i = 0; i < n; i++) {
                    for (int j = 0; j < n; j++) {
                        int d = i ^ j;
                        boolean xor = d == 0 || (Integer.bitCount(d) == 1 && d < k);
                        assertEquals(xor, m[i][j], "n=" + n + " k=" + k + " block (" + i + ", " + j + ")");
                    }
                }
                assertEquals(n * (log + 1), FlatButterfly.count(m), "n=" + n + " k=" + k);
            }
        }
    }

    @Test
    void fewerFactorsKeepTheSmallestStrides() {
        boolean[][] m = FlatButterfly.layout(16, 16, 16, 2);
        assertEquals(16 * 3, FlatButterfly.count(m));
        assertTrue(m[0][1] && m[0][2] && !m[0][4] && !m[0][8] && !m[0][3]);
    }

    @Test
    void rectangularLayoutStretchesTheSquareOneAndIsSymmetricUnderTranspose() {
        boolean[][] tall = FlatButterfly.layout(16, 4, 4, 2);
        boolean[][] wide = FlatButterfly.layout(4, 16, 4, 2);
        boolean[][] square = FlatButterfly.layout(4, 4, 4, 2);
        for (int i = 0; i < 16; i++) {
            for (int j = 0; j < 4; j++) {
                assertEquals(square[i / 4][j], tall[i][j]);
                assertEquals(tall[i][j], wide[j][i]);
            }
        }
        assertEquals(4 * FlatButterfly.count(square), FlatButterfly.count(tall));
    }

    @Test
    void badArgumentsAreNamed() {
        assertTrue(assertThrows(IllegalArgumentException.class, () -> FlatButterfly.layout(4, 4, 6, 1))
                .getMessage().contains("power of two"));
        assertTrue(assertThrows(IllegalArgumentException.class, () -> FlatButterfly.layout(4, 4, 4, 3))
                .getMessage().contains("factors 3"));
        assertTrue(assertThrows(IllegalArgumentException.class, () -> FlatButterfly.layout(6, 4, 4, 2))
                .getMessage().contains("multiple"));
    }
}
