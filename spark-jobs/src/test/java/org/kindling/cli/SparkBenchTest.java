package org.kindling.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import java.util.List;
import org.junit.jupiter.api.Test;

class SparkBenchTest {
    /** One JSON line per mode with exactly the documented fields, and the ratio on stderr. */
    @Test
    void printsInProcessAndSparkFiguresFromOneRun() throws Exception {
        CliRun r = CliRun.of("bench", "spark", "--config", "tiny", "--set", "batch_tokens=512", "--workers", "2", "--steps", "2",
                "--warmup", "1", "--json");
        List<JsonNode> rows = r.rows(null);
        assertEquals(List.of("in-process", "spark"), rows.stream().map(n -> n.get("mode").asText()).toList());
        for (String line : r.out().strip().split("\n")) {
            assertEquals(List.of("bench", "mode", "workers", "pipeline_stages", "tokens_per_s"), CliTest.fieldNames(line), line);
        }
        for (JsonNode row : rows) {
            assertEquals("spark", row.get("bench").asText());
            assertEquals(2, row.get("workers").asInt());
            assertTrue(row.get("tokens_per_s").asDouble() > 0, r.out());
        }
        assertTrue(r.err().contains("spark / in-process = "), r.err());
        CliRun.assertUsageError("--workers must be at least 1, got 0", "bench", "spark", "--config", "tiny", "--workers", "0");
    }

    /** Two pipeline stages: kindling train --pipeline-stages 2 beside the same stages on threads in this JVM. */
    @Test
    void pipelineStagesOnSparkBesideTheSameStagesInProcess() throws Exception {
        CliRun r = CliRun.of("bench", "spark", "--config", "tiny", "--set", "batch_tokens=512", "--set", "grad_accum=2", "--workers",
                "2", "--pipeline-stages", "2", "--steps", "2", "--warmup", "1", "--json");
        List<JsonNode> rows = r.rows(null);
        assertEquals(List.of("in-process", "spark"), rows.stream().map(n -> n.get("mode").asText()).toList());
        for (JsonNode row : rows) {
            assertEquals(2, row.get("pipeline_stages").asInt());
            assertTrue(row.get("tokens_per_s").asDouble() > 0, r.out());
        }
        assertTrue(r.err().contains("in-process: 2 pipeline stage(s) x 1 thread"), r.err());
        CliRun.assertUsageError("--pipeline-stages 2 needs --workers 2", "bench", "spark", "--config", "tiny", "--workers", "4",
                "--pipeline-stages", "2");
    }
}
