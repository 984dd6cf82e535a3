package org.kindling.models.train;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.junit.jupiter.api.Test;

/** Step results carry layers' named metrics: sorted, copied, and with their names checked in one place. */
class StepResultTest {
    private static StepResult with(Map<String, Double> metrics) {
        return new StepResult(3, 2.0, 1e-3, 0.5, 128, 0.25, new TreeMap<>(metrics));
    }

    @Test
    void metricsAreACopyInNameOrderAndTheSixArgumentFormHasNone() {
        TreeMap<String, Double> given = new TreeMap<>(Map.of("z_loss", 0.25, "moe_balance_loss", 1.5e-3));
        StepResult r = new StepResult(3, 2.0, 1e-3, 0.5, 128, 0.25, given);
        given.put("dropped", 1.0);
        assertEquals(List.of("moe_balance_loss", "z_loss"), List.copyOf(r.metrics().keySet()));
        assertThrows(UnsupportedOperationException.class, () -> r.metrics().put("x", 1.0));
        assertEquals(" | moe_balance_loss 0.001500 | z_loss 0.2500", r.metricsText());
        StepResult plain = new StepResult(3, 2.0, 1e-3, 0.5, 128, 0.25);
        assertTrue(plain.metrics().isEmpty());
        assertEquals("", plain.metricsText());
        assertEquals(plain, with(Map.of()));
    }

    @Test
    void badNamesAndTooManyMetricsAreRefusedByName() {
        for (String bad : List.of("Loss", "1st", "_x", "moe-loss", "", "a b")) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> with(Map.of(bad, 1.0)));
            assertTrue(e.getMessage().contains("'" + bad + "'"), e.getMessage());
        }
        String longest = "m".repeat(StepResult.MAX_NAME);
        assertEquals(1, with(Map.of(longest, 1.0)).metrics().size());
        IllegalArgumentException tooLong = assertThrows(IllegalArgumentException.class, () -> with(Map.of(longest + "m", 1.0)));
        assertTrue(tooLong.getMessage().contains("65 characters"), tooLong.getMessage());
        IllegalArgumentException taken = assertThrows(IllegalArgumentException.class, () -> with(Map.of("grad_norm", 1.0)));
        assertTrue(taken.getMessage().contains("grad_norm is taken"), taken.getMessage());
        Map<String, Double> many = new HashMap<>();
        for (int i = 0; i < StepResult.MAX_METRICS; i++) {
            many.put("m" + i, (double) i);
        }
        assertEquals(StepResult.MAX_METRICS, with(many).metrics().size());
        many.put("one_more", 0.0);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> with(many));
        assertTrue(e.getMessage().contains("65 metrics"), e.getMessage());
        Map<String, Double> nullValue = new HashMap<>();
        nullValue.put("moe_load", null);
        assertTrue(assertThrows(IllegalArgumentException.class, () -> with(nullValue)).getMessage().contains("moe_load"));
    }
}
