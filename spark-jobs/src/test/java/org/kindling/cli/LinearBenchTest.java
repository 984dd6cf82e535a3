package org.kindling.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import java.util.List;
import org.junit.jupiter.api.Test;

/** {@code bench linear} of issue 16 at tiny sizes: its JSON rows, stderr ratios and option checks. */
class LinearBenchTest {
    private static final List<String> FIELDS = List.of("bench", "impl", "fwd_ms", "fwd_bwd_ms", "params");

    @Test
    void linearMeasuresEachImplementationWithItsParameters() throws Exception {
        CliRun r = CliRun.of("bench", "linear", "--in", "64", "--out", "128", "--tokens", "16", "--reps", "1", "--threads", "1",
                "--json");
        List<JsonNode> rows = r.rows(FIELDS);
        assertEquals(List.of("dense", "pixelfly", "butterfly"), rows.stream().map(n -> n.get("impl").asText()).toList(), r.out());
        for (JsonNode row : rows) {
            assertEquals("linear", row.get("bench").asText());
            assertTrue(row.get("fwd_ms").asDouble() >= 0 && row.get("fwd_bwd_ms").asDouble() >= 0, row.toString());
        }
        assertEquals(64 * 128 + 128, rows.get(0).get("params").asLong(), "dense: weight and bias");
        // Pixelfly at block 32 over 16 butterfly nodes of 8 × 4 features: block row i covers nodes 4i…4i+3 and block column j
        // nodes 8j…8j+7; strides 1 and 2 stay within groups of 4 nodes, so block (i, j) is kept iff i is 2j or 2j + 1: 4 of
        // the 4×2 blocks, plus rank-32 U and V and the bias.
        long kept = 4L * 32 * 32;
        assertEquals(kept + 32L * (64 + 128) + 128, rows.get(1).get("params").asLong(), r.out());
        // Butterfly matched to pixelfly: one term of 64 → 128 is 6 factors × 2 rows × 128 twiddles; the nearest count of terms.
        long term = 6 * 2 * 128;
        assertTrue(Math.abs(rows.get(2).get("params").asLong() - rows.get(1).get("params").asLong()) <= term / 2, r.out());
        assertTrue(r.err().contains("butterfly: a sum of 7 butterfly matrices, the parameters nearest pixelfly's"), r.err());
        assertTrue(r.err().contains("pixelfly vs dense: fwd ") && r.err().contains("pixelfly vs butterfly: fwd "), r.err());
    }

    @Test
    void pixelflyParamsCountOnlyTheKeptBlocks() throws Exception {
        // 256 → 512 at block 32: a 16×8 grid over 16 nodes of 32 × 16 features. Block row i is node i, block column j nodes
        // 2j and 2j + 1, so row i keeps the columns of nodes i, i XOR 1 and i XOR 2: j = i/2 and (i XOR 2)/2, two per row.
        List<JsonNode> rows = CliRun.of("bench", "linear", "--in", "256", "--out", "512", "--tokens", "8", "--impl", "pixelfly",
                "--reps", "1", "--threads", "1", "--json").rows(FIELDS);
        assertEquals(1, rows.size());
        long kept = 16L * 2 * 32 * 32;
        assertEquals(kept + 32L * (256 + 512) + 512, rows.get(0).get("params").asLong(), rows.toString());
    }

    @Test
    void linearChecksItsOptions() throws Exception {
        CliRun.assertUsageError("--impl sparse is unknown; known: dense, pixelfly, butterfly", "bench", "linear", "--impl", "sparse");
        CliRun.assertUsageError("repeat an implementation", "bench", "linear", "--impl", "dense,dense");
        CliRun.assertUsageError("--tokens must be at least 1, got 0", "bench", "linear", "--tokens", "0");
        CliRun.assertUsageError("--impl pixelfly at --in 40", "bench", "linear", "--in", "40", "--out", "64", "--tokens", "2", "--impl",
                "pixelfly");
        CliRun.assertUsageError("--seconds must be a finite number", "bench", "linear", "--seconds", "-1");
    }
}
