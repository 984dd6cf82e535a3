package org.kindling.data;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.HashMap;
import java.util.Map;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;

class MergeTableTest {
    /** Against a HashMap on pairs that collide under Long.hashCode (left ^ right equal) and on random ones, present and absent. */
    @Test
    void agreesWithAMapAndKeepsTheFirstValueOfAPair() {
        SplittableRandom r = new SplittableRandom(7);
        Map<Long, Long> expected = new HashMap<>();
        MergeTable table = new MergeTable(3000);
        for (int i = 0; i < 3000; i++) {
            int a = i < 1000 ? i : r.nextInt(8192);
            int b = i < 1000 ? i ^ 5 : r.nextInt(8192);
            long pair = MergeTable.pair(a, b);
            long value = ((long) i << 32) | r.nextInt(8192);
            expected.putIfAbsent(pair, value);
            table.putIfAbsent(pair, value);
        }
        expected.forEach((pair, value) -> assertEquals(value, table.get(pair)));
        for (int i = 0; i < 20000; i++) {
            long pair = MergeTable.pair(r.nextInt(9000), r.nextInt(9000));
            assertEquals(expected.getOrDefault(pair, MergeTable.ABSENT), table.get(pair));
        }
        assertEquals(MergeTable.ABSENT, new MergeTable(0).get(MergeTable.pair(0, 0)));
    }
}
