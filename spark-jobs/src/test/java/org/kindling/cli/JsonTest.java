package org.kindling.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.TreeMap;
import org.junit.jupiter.api.Test;

/** Bench result lines: a step's layer metrics as extra fields after the line's own, in name order. */
class JsonTest {
    private static String line(Map<String, Object> row) {
        StringWriter s = new StringWriter();
        Json.printLine(new PrintWriter(s), row);
        return s.toString().strip();
    }

    @Test
    void metricsFollowTheLinesFieldsAndNonFiniteValuesAreNull() {
        Map<String, Object> row = new LinkedHashMap<>();
        row.put("bench", "train");
        row.put("tokens_per_s", 12.5);
        Json.putMetrics(row, new TreeMap<>(Map.of("z_loss", 1.5e-7, "moe_balance_loss", 0.0123, "dropped_fraction", Double.NaN,
                "expert_imbalance", Double.POSITIVE_INFINITY)));
        assertEquals("{\"bench\":\"train\",\"tokens_per_s\":12.5,\"dropped_fraction\":null,\"expert_imbalance\":null,"
                + "\"moe_balance_loss\":0.0123,\"z_loss\":1.5E-7}", line(row));
        Map<String, Object> plain = new LinkedHashMap<>(Map.of("bench", "recall"));
        Json.putMetrics(plain, new TreeMap<>());
        assertEquals("{\"bench\":\"recall\"}", line(plain));
    }

    @Test
    void aMetricNamedLikeAFieldOfTheLineIsRefused() {
        Map<String, Object> row = new LinkedHashMap<>();
        row.put("bench", "recall");
        row.put("accuracy", 0.5);
        IllegalStateException e = assertThrows(IllegalStateException.class,
                () -> Json.putMetrics(row, new TreeMap<>(Map.of("accuracy", 0.9))));
        assertTrue(e.getMessage().contains("metric accuracy"), e.getMessage());
        assertEquals(0.5, row.get("accuracy"));
    }
}
