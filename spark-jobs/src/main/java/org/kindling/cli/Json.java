package org.kindling.cli;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.PrintWriter;
import java.util.Map;

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
}
