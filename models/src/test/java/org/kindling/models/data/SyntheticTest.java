package org.kindling.models.data;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

class SyntheticTest {

    @Test
    void associativeRecallAnswersWithTheValueOfTheQueriedKey() {
        Synthetic.Examples ex = Synthetic.associativeRecall(20, 64, 200, 3);
        for (int e = 0; e < ex.size(); e++) {
            int[] s = ex.sequences().get(e);
            assertEquals(64, s.length);
            int query = s[62];
            assertTrue(query < 10, "keys come from the first half of the vocab");
            boolean seen = false;
            for (int p = 0; p < 62; p += 2) {
                if (s[p] == query) {
                    assertEquals(s[p + 1], s[63], "the answer is the value the key was paired with");
                    seen = true;
                }
                assertTrue(s[p + 1] >= 10, "values come from the second half");
            }
            assertTrue(seen, "the queried key appeared");
            assertTrue(ex.trained().get(e)[63] && !ex.trained().get(e)[62]);
        }
    }

    @Test
    void inductionHeadRepeatsTheTokenAfterTheMarker() {
        Synthetic.Examples ex = Synthetic.inductionHead(20, 64, 200, 4);
        for (int[] s : ex.sequences()) {
            assertEquals(19, s[62]);
            int first = -1;
            for (int i = 0; i < 62; i++) {
                if (s[i] == 19) {
                    assertEquals(-1, first, "the marker appears once before the end");
                    first = i;
                }
            }
            assertEquals(s[first + 1], s[63]);
        }
    }

    @Test
    void streamsAreDeterministicAndSeekable() {
        DataSource a = Synthetic.stream(Synthetic.Task.ASSOCIATIVE_RECALL, 20, 32, 4, 9);
        DataSource b = Synthetic.stream(Synthetic.Task.ASSOCIATIVE_RECALL, 20, 32, 4, 9);
        a.next();
        TokenBatch second = a.next();
        b.seek(1);
        assertArrayEquals(second.tokens(), b.next().tokens());
        assertEquals(4, second.sequences());
        assertThrows(IllegalArgumentException.class, () -> Synthetic.stream(Synthetic.Task.ASSOCIATIVE_RECALL, 21, 32, 4, 9));
        assertThrows(IllegalArgumentException.class, () -> Synthetic.Task.parse("copying"));
    }
}
