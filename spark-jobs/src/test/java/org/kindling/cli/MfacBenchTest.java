package org.kindling.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import java.util.List;
import org.junit.jupiter.api.Test;

/** {@code bench mfac} of issue 17 at tiny sizes: its JSON rows, the dense check and option checks. */
class MfacBenchTest {
    private static final List<String> FIELDS = List.of("bench", "impl", "d", "m", "ms");

    @Test
    void mfacTimesEachWindowBesideTheDenseSolve() throws Exception {
        CliRun r = CliRun.of("bench", "mfac", "--d", "5000", "--m", "2,8", "--dense-d", "60", "--reps", "1", "--threads", "1", "--json");
        List<JsonNode> rows = r.rows(FIELDS);
        assertEquals(List.of("mfac 5000 2", "mfac 5000 8", "mfac 60 8", "dense 60 8"), rows.stream()
                .map(n -> n.get("impl").asText() + " " + n.get("d").asInt() + " " + n.get("m").asInt()).toList(), r.out());
        for (JsonNode row : rows) {
            assertEquals("mfac", row.get("bench").asText());
            assertTrue(row.get("ms").asDouble() >= 0, row.toString());
        }
        // The dense check passed (else the command fails): its difference is on stderr.
        assertTrue(r.err().contains("beside dense; relative difference"), r.err());
    }

    @Test
    void mfacChecksItsOptions() throws Exception {
        CliRun.assertUsageError("--m values must be >= 1, got 0", "bench", "mfac", "--m", "0");
        CliRun.assertUsageError("--m 4096 × --d 1000000 exceeds one tensor's 2^31-1 elements", "bench", "mfac", "--m", "4096");
        CliRun.assertUsageError("--dense-d must be in 0..8192", "bench", "mfac", "--dense-d", "10000");
        CliRun.assertUsageError("--damp must be a finite number > 0", "bench", "mfac", "--damp", "0");
    }
}
