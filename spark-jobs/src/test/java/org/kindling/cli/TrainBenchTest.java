package org.kindling.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import org.junit.jupiter.api.Test;

class TrainBenchTest {
    private static final String[] TINY = {"bench", "train", "--layers", "1", "--d-model", "16", "--heads", "2", "--vocab", "32",
        "--seq", "16", "--batch", "2", "--steps", "1", "--warmup", "0", "--threads", "1", "--json"};

    private static String[] with(String... more) {
        String[] args = java.util.Arrays.copyOf(TINY, TINY.length + more.length);
        System.arraycopy(more, 0, args, TINY.length, more.length);
        return args;
    }

    @Test
    void dtypeSelectsThePrecisionAndNamesItInImpl() throws Exception {
        JsonNode fp32 = CliRun.of(TINY).rows(null).get(0);
        assertEquals("kindling", fp32.get("impl").asText());
        CliRun r = CliRun.of(with("--dtype", "bf16"));
        JsonNode bf16 = r.rows(null).get(0);
        assertEquals("kindling bf16", bf16.get("impl").asText());
        assertEquals(fp32.get("params").asLong(), bf16.get("params").asLong());
        assertTrue(bf16.get("tokens_per_s").asDouble() > 0, r.out());
        CliRun.assertUsageError("--dtype must be fp32 or bf16, got fp16", with("--dtype", "fp16"));
        CliRun.assertUsageError("--dtype bf16 is not modelled on the reference device", "bench", "train", "--layers", "1",
                "--d-model", "16", "--heads", "2", "--vocab", "32", "--seq", "16", "--batch", "2", "--device", "reference",
                "--dtype", "bf16");
    }
}
