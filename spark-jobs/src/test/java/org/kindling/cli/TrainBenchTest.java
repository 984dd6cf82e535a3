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

    /**
     * --profile adds one JSON line per kernel class after the result line, with exactly the
     * documented fields; the shares sum to one and two replicas spend time communicating.
     */
    @Test
    void profilePrintsATableAndOneJsonLinePerClass() throws Exception {
        CliRun r = CliRun.of("bench", "train", "--layers", "1", "--d-model", "16", "--heads", "2", "--vocab", "32", "--seq", "16",
                "--batch", "2", "--steps", "2", "--warmup", "1", "--threads", "2", "--json", "--profile");
        java.util.List<JsonNode> rows = r.rows(null);
        assertEquals("train", rows.get(0).get("bench").asText());
        java.util.List<JsonNode> classes = rows.subList(1, rows.size());
        assertEquals(java.util.Arrays.stream(org.kindling.ops.KernelClass.values()).map(org.kindling.ops.KernelClass::label).toList(),
                classes.stream().map(c -> c.get("class").asText()).toList());
        double flopShare = 0;
        double timeShare = 0;
        for (String line : r.out().strip().split("\n")) {
            if (line.contains("train_profile")) {
                assertEquals(java.util.List.of("bench", "class", "calls", "gflop", "mbytes", "ms", "flop_share", "time_share"),
                        CliTest.fieldNames(line), line);
            }
        }
        for (JsonNode c : classes) {
            flopShare += c.get("flop_share").asDouble();
            timeShare += c.get("time_share").asDouble();
        }
        assertEquals(1.0, flopShare, 1e-3);
        assertEquals(1.0, timeShare, 1e-3);
        JsonNode gemm = classes.get(0);
        assertTrue(gemm.get("gflop").asDouble() > 0 && gemm.get("mbytes").asDouble() > 0 && gemm.get("calls").asDouble() > 0, r.out());
        assertTrue(classes.get(classes.size() - 1).get("ms").asDouble() > 0, "two replicas communicate: " + r.out());
        assertTrue(r.err().contains("%FLOP") && r.err().contains("communication") && r.err().contains("total")
                && r.err().contains("costliest kernels per step:"), r.err());
    }
}
