package org.kindling.models.nn;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Arrays;
import org.junit.jupiter.api.Test;

class FlatButterflyTest {
    @Test
    void oneBlockPerNodeIsTheXorRuleWithKTimesLogKPlusOneBlocks() {
        for (int k : new int[] {1, 2, 4, 16}) {
            int log = Integer.numberOfTrailingZeros(k);
            boolean[][] m = FlatButterfly.layout(8 * k, 8 * k, 8, k, log);
            for (int i = 0; i < k; i++) {
                for (int j = 0; j < k; j++) {
                    int d = i ^ j;
                    boolean xor = d == 0 || (Integer.bitCount(d) == 1 && d < k);
                    assertEquals(xor, m[i][j], "k=" + k + " block (" + i + ", " + j + ")");
                }
            }
            assertEquals(k * (log + 1), FlatButterfly.count(m), "k=" + k);
        }
    }

    @Test
    void nodesOfSeveralBlocksRepeatTheNodePattern() {
        boolean[][] nodes = FlatButterfly.layout(4 * 16, 4 * 16, 16, 4, 2);
        boolean[][] m = FlatButterfly.layout(4 * 48, 4 * 48, 16, 4, 2);
        for (int i = 0; i < 12; i++) {
            for (int j = 0; j < 12; j++) {
                assertEquals(nodes[i / 3][j / 3], m[i][j], "block (" + i + ", " + j + ")");
            }
        }
        assertEquals(9 * FlatButterfly.count(nodes), FlatButterfly.count(m));
    }

    @Test
    void fewerFactorsKeepTheSmallestStrides() {
        boolean[][] m = FlatButterfly.layout(16 * 32, 16 * 32, 32, 16, 2);
        assertEquals(16 * 3, FlatButterfly.count(m));
        assertTrue(m[0][1] && m[0][2] && !m[0][4] && !m[0][8] && !m[0][3]);
    }

    /**
     * The authors' make_layout (HazyResearch/fly, FlatBlockButterflySparsityConfig) for the paper's
     * MLP setting on GPT-2 small's widths: k = 16 nodes of 48 features do not fall on 32-blocks, so
     * a block keeps every node pair it touches. The masks are theirs, computed with their einops code.
     */
    @Test
    void equalsTheAuthorsLayoutWhereNodesStraddleBlocks() {
        String[] authors = {
            "#####...................", "######..................", "###.##..................", "##.###..................",
            "######..................", ".#####..................", "......#####.............", "......######............",
            "......###.##............", "......##.###............", "......######............", ".......#####............",
            "............#####.......", "............######......", "............###.##......", "............##.###......",
            "............######......", ".............#####......", "..................#####.", "..................######",
            "..................###.##", "..................##.###", "..................######", "...................#####"};
        boolean[][] m = FlatButterfly.layout(768, 768, 32, 16, 2);
        String[] got = Arrays.stream(m).map(FlatButterflyTest::row).toArray(String[]::new);
        assertArrayEquals(authors, got);
        assertEquals(128, FlatButterfly.count(m));
        // The MLP's projections: 480 of 2304 blocks, five in every row of the up projection.
        boolean[][] up = FlatButterfly.layout(3072, 768, 32, 16, 2);
        assertEquals(480, FlatButterfly.count(up));
        assertTrue(Arrays.stream(up).allMatch(r -> row(r).chars().filter(c -> c == '#').count() == 5));
        assertEquals(480, FlatButterfly.count(FlatButterfly.layout(768, 3072, 32, 16, 2)));
        assertEquals(864, FlatButterfly.count(FlatButterfly.layout(3072, 768, 32, 8, 2)));
    }

    @Test
    void aRectangularLayoutIsTheTransposeOfItsMirror() {
        boolean[][] tall = FlatButterfly.layout(1280, 320, 32, 16, 2);
        boolean[][] wide = FlatButterfly.layout(320, 1280, 32, 16, 2);
        for (int i = 0; i < tall.length; i++) {
            for (int j = 0; j < tall[0].length; j++) {
                assertEquals(tall[i][j], wide[j][i]);
            }
        }
        assertEquals(112, FlatButterfly.count(tall));
    }

    private static String row(boolean[] r) {
        StringBuilder b = new StringBuilder();
        for (boolean v : r) {
            b.append(v ? '#' : '.');
        }
        return b.toString();
    }

    @Test
    void badArgumentsAreNamed() {
        assertTrue(assertThrows(IllegalArgumentException.class, () -> FlatButterfly.layout(64, 64, 16, 6, 1))
                .getMessage().contains("power of two"));
        assertTrue(assertThrows(IllegalArgumentException.class, () -> FlatButterfly.layout(64, 64, 16, 4, 3))
                .getMessage().contains("factors 3"));
        assertTrue(assertThrows(IllegalArgumentException.class, () -> FlatButterfly.layout(96, 64, 32, 64, 2))
                .getMessage().contains("must divide out 96"));
        assertTrue(assertThrows(IllegalArgumentException.class, () -> FlatButterfly.layout(96, 64, 64, 4, 2))
                .getMessage().contains("block 64 must divide"));
    }
}
