package org.kindling.cli;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.PrintWriter;
import java.util.Map;
import java.util.SortedMap;

/** One JSON object per line on stdout: the machine-readable output of {@code --json}. */
final class Json {
    private static final ObjectMapper MAPPER = new ObjectMapper();

    private Json() {
    }

    static void printLine(PrintWriter out, Map<String, ?> fields) {
        try {
            out.println(MAPPER.writeValueAsString(fields));
            out.flush();
        } catch (JsonProcessingException e) {
            throw new IllegalStateException("cannot write JSON for " + fields, e);
        }
    }

    /**
     * Adds a step's layer metrics to a result line as extra fields, by name (NaN and ±∞ as null: JSON
     * has no such numbers); a metric named like one of the line's own fields is refused.
     */
    static void putMetrics(Map<String, Object> fields, SortedMap<String, Double> metrics) {
        metrics.forEach((name, value) -> {
            if (fields.containsKey(name)) {
                throw new IllegalStateException("metric " + name + " has the name of a field of the result line " + fields.keySet());
            }
            fields.put(name, Double.isFinite(value) ? value : null);
        });
    }
}
