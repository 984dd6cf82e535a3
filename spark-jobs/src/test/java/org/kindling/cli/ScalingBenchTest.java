package org.kindling.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import java.util.List;
import org.junit.jupiter.api.Test;

/** {@code bench scaling} of issue 18 at tiny sizes: a row per mode and worker count with the survey's three measures. */
class ScalingBenchTest {
    private static final List<String> FIELDS = List.of("bench", "mode", "workers", "tokens_per_s", "speedup", "loss", "loss_1_worker",
            "tokens", "optimizer_bytes", "activation_bytes");

    @Test
    void rowsPerModeAndWorkersWithThroughputLossAndMemory() throws Exception {
        CliRun r = CliRun.of("bench", "scaling", "--preset", "tiny", "--seq", "32", "--batch", "4", "--micro-batches", "2", "--steps",
                "2", "--warmup", "1", "--threads", "2", "--json");
        List<JsonNode> rows = r.rows(FIELDS);
        assertEquals(List.of("dp 1", "dp 2", "zero1 1", "zero1 2", "pipeline 1", "pipeline 2"),
                rows.stream().map(n -> n.get("mode").asText() + " " + n.get("workers").asInt()).toList(), r.out());
        for (JsonNode row : rows) {
            assertEquals("scaling", row.get("bench").asText());
            assertTrue(row.get("tokens_per_s").asDouble() > 0, row.toString());
            assertEquals(3 * 4 * 32, row.get("tokens").asLong(), row.toString());
            assertTrue(row.get("activation_bytes").asLong() > 0, row.toString());
            assertTrue(Double.isFinite(row.get("loss").asDouble()), row.toString());
        }
        long whole = rows.get(0).get("optimizer_bytes").asLong();
        assertTrue(whole > 0, r.out());
        assertEquals(whole, rows.get(1).get("optimizer_bytes").asLong(), "dp: every worker holds all of AdamW's moments");
        assertTrue(rows.get(3).get("optimizer_bytes").asLong() < 0.6 * whole, "zero1 on 2 workers holds about half: " + r.out());
        assertTrue(rows.get(5).get("optimizer_bytes").asLong() < whole, "a pipeline stage holds its stage's moments: " + r.out());
        // One worker of every mode is one model taking the same steps on the same batches.
        assertEquals(rows.get(0).get("loss").asDouble(), rows.get(2).get("loss").asDouble(), r.out());
        assertEquals(rows.get(0).get("loss").asDouble(), rows.get(4).get("loss").asDouble(), r.out());
        assertEquals(rows.get(0).get("loss").asDouble(), rows.get(1).get("loss_1_worker").asDouble(), r.out());
        assertTrue(rows.get(0).get("speedup").asDouble() == 1.0, r.out());
    }

    @Test
    void scalingChecksItsOptions() throws Exception {
        CliRun.assertUsageError("--modes takes dp, zero1 and pipeline, got 'tp'", "bench", "scaling", "--modes", "tp");
        CliRun.assertUsageError("--micro-batches 3 must divide --batch 8", "bench", "scaling", "--micro-batches", "3");
        CliRun.assertUsageError("the pipeline mode needs a block per stage, and the model has 2", "bench", "scaling", "--preset",
                "tiny", "--workers", "3", "--threads", "4");
    }
}
