package org.kindling.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import java.util.List;
import org.junit.jupiter.api.Test;

/** {@code bench pipeline} of issue 18 at tiny sizes: real stages in threads, one JSON row per jitter, policy and order, option checks. */
class PipelineBenchTest {
    private static final List<String> FIELDS = List.of("bench", "policy", "order", "slack", "stages", "micro_batches", "jitter", "ms_per_step",
            "peak_activation_bytes");

    @Test
    void pipelineRowsPerJitterPolicyAndOrder() throws Exception {
        CliRun r = CliRun.of("bench", "pipeline", "--stages", "2", "--micro-batches", "4", "--policy", "1f1b,1f1b-recompute,shifted",
                "--jitter", "0,0.2", "--layers", "2", "--d-model", "16", "--heads", "2", "--vocab", "32", "--seq", "16", "--steps", "1",
                "--warmup", "0", "--threads", "2", "--json");
        List<JsonNode> rows = r.rows(FIELDS);
        assertEquals(List.of("1f1b static 0.0", "1f1b message-driven 0.0", "1f1b-recompute static 0.0",
                        "1f1b-recompute message-driven 0.0", "shifted static 0.0", "shifted message-driven 0.0", "1f1b static 0.2",
                        "1f1b message-driven 0.2", "1f1b-recompute static 0.2", "1f1b-recompute message-driven 0.2", "shifted static 0.2",
                        "shifted message-driven 0.2"),
                rows.stream().map(n -> n.get("policy").asText() + " " + n.get("order").asText() + " " + n.get("jitter").asDouble())
                        .toList(), r.out());
        for (JsonNode row : rows) {
            assertEquals("pipeline", row.get("bench").asText());
            assertEquals(2, row.get("stages").asInt());
            assertEquals(4, row.get("micro_batches").asInt());
            assertTrue(row.get("ms_per_step").asDouble() > 0, row.toString());
            assertEquals(2, row.get("peak_activation_bytes").size(), row.toString());
        }
        // Stage 0 holds two micro-batches in flight: keeping both costs more than keeping inputs and recomputing.
        // Under either order, since message-driven stage 0 also holds up to two (1F1B's bound).
        assertTrue(rows.get(0).get("peak_activation_bytes").get(0).asLong() > rows.get(2).get("peak_activation_bytes").get(0).asLong(),
                r.out());
        assertTrue(rows.get(1).get("peak_activation_bytes").get(0).asLong() > rows.get(3).get("peak_activation_bytes").get(0).asLong(),
                r.out());
        CliRun one = CliRun.of("bench", "pipeline", "--stages", "2", "--micro-batches", "2", "--policy", "shifted", "--order",
                "message-driven", "--layers", "2", "--d-model", "16", "--heads", "2", "--vocab", "32", "--seq", "16", "--steps", "1",
                "--warmup", "0", "--threads", "2", "--json");
        assertEquals(List.of("message-driven"), one.rows(FIELDS).stream().map(n -> n.get("order").asText()).toList(), one.out());
        // One more micro-batch in flight: stage 0 of 2 holds up to 3 of 4, so it keeps more inputs than 1F1B's 2.
        CliRun slack = CliRun.of("bench", "pipeline", "--stages", "2", "--micro-batches", "4", "--policy", "1f1b-recompute", "--order",
                "message-driven", "--slack", "1", "--layers", "2", "--d-model", "16", "--heads", "2", "--vocab", "32", "--seq", "16",
                "--steps", "1", "--warmup", "0", "--threads", "2", "--json");
        JsonNode loose = slack.rows(FIELDS).get(0);
        assertEquals(1, loose.get("slack").asInt(), slack.out());
        assertTrue(loose.get("peak_activation_bytes").get(0).asLong() >= rows.get(3).get("peak_activation_bytes").get(0).asLong(),
                slack.out() + r.out());
    }

    @Test
    void pipelineChecksItsOptions() throws Exception {
        CliRun.assertUsageError("--policy: pipeline policy must be one of", "bench", "pipeline", "--policy", "gpipe");
        CliRun.assertUsageError("--stages 5 exceeds --layers 4", "bench", "pipeline", "--stages", "5");
        CliRun.assertUsageError("--jitter values must be finite numbers >= 0", "bench", "pipeline", "--jitter", "-1");
        CliRun.assertUsageError("--order: pipeline order must be one of static, message-driven, got 'dynamic'", "bench", "pipeline",
                "--order", "dynamic");
        CliRun.assertUsageError("--slack must be at least 0, got -1", "bench", "pipeline", "--slack", "-1");
    }
}
