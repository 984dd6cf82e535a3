package org.kindling.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.util.ArrayList;
import java.util.List;

/** A command line run in-process through {@link Kindling#run(PrintWriter, PrintWriter, String...)}: exit code, stdout, stderr. */
record CliRun(int code, String out, String err) {
    static CliRun of(String... args) {
        StringWriter out = new StringWriter();
        StringWriter err = new StringWriter();
        int code = Kindling.run(new PrintWriter(out, true), new PrintWriter(err, true), args);
        return new CliRun(code, out.toString(), err.toString());
    }

    /** The JSON lines of a successful run, each with exactly {@code fields} (in order) unless that is null. */
    List<JsonNode> rows(List<String> fields) throws Exception {
        assertEquals(0, code, err);
        ObjectMapper json = new ObjectMapper();
        List<JsonNode> rows = new ArrayList<>();
        for (String line : out.strip().split("\n")) {
            if (fields != null) {
                assertEquals(fields, CliTest.fieldNames(line), line);
            }
            rows.add(json.readTree(line));
        }
        return rows;
    }

    /** Runs a command that must fail as a usage error (exit 2) whose message contains {@code expected}. */
    static void assertUsageError(String expected, String... args) {
        CliRun r = of(args);
        assertEquals(2, r.code(), String.join(" ", args) + ": " + r.err());
        assertTrue(r.err().contains(expected), r.err());
    }
}
