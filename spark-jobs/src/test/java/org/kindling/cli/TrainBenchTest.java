package org.kindling.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

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
                "--batch", "2", "--steps", "2", "--warmup", "1", "--threads", "2", "--json", "--profile", "--ceiling", "0");
        java.util.List<JsonNode> rows = r.rows(null);
        assertEquals("train", rows.get(0).get("bench").asText());
        java.util.List<JsonNode> classes = rows.stream().filter(c -> c.get("bench").asText().equals("train_profile")).toList();
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

    /**
     * --ceiling times a GEMM on the same threads first (one train_ceiling line per side) and reports the
     * step's counted FLOPs as a share of it (a train_utilization line); the same count with --profile.
     */
    @Test
    void ceilingReportsTheStepAsAShareOfAGemmTimedInTheSameRun() throws Exception {
        CliRun r = CliRun.of(with("--ceiling", "64"));
        String[] lines = r.out().strip().split("\n");
        assertEquals(3, lines.length, r.out());
        assertEquals(java.util.List.of("bench", "impl", "n", "threads", "gflops"), CliTest.fieldNames(lines[1]));
        assertEquals(java.util.List.of("bench", "impl", "gflop_per_step", "gflops", "ceiling_gflops", "ceiling_share"),
                CliTest.fieldNames(lines[2]));
        java.util.List<JsonNode> rows = r.rows(null);
        JsonNode gemm = rows.get(1);
        JsonNode use = rows.get(2);
        assertEquals("train_ceiling", gemm.get("bench").asText());
        assertEquals(64, gemm.get("n").asInt());
        assertEquals("train_utilization", use.get("bench").asText());
        assertEquals("kindling", use.get("impl").asText());
        double gflops = use.get("gflops").asDouble();
        double ceiling = use.get("ceiling_gflops").asDouble();
        assertEquals(gemm.get("gflops").asDouble(), ceiling);
        assertTrue(use.get("gflop_per_step").asDouble() > 0 && gflops > 0, r.out());
        assertEquals(gflops / ceiling, use.get("ceiling_share").asDouble(), 0.01 * gflops / ceiling + 1e-4, r.out());
        assertTrue(r.err().contains("of the GEMM ceiling"), r.err());
        JsonNode profiled = CliRun.of(with("--ceiling", "64", "--profile")).rows(null).stream()
                .filter(j -> j.get("bench").asText().equals("train_utilization")).findFirst().orElseThrow();
        assertEquals(use.get("gflop_per_step").asDouble(), profiled.get("gflop_per_step").asDouble(), 1e-12);
        CliRun.assertUsageError("--ceiling must be 0 (skip) or a GEMM size, got -1", with("--ceiling", "-1"));
    }

    @Test
    void optimizerSelectsMfacAndNamesItInImpl() throws Exception {
        CliRun r = CliRun.of(with("--optimizer", "mfac", "--ngrads", "4", "--ceiling", "0"));
        JsonNode mfac = r.rows(null).get(0);
        assertEquals("kindling mfac", mfac.get("impl").asText());
        assertTrue(mfac.get("opt_ms").asDouble() >= 0, r.out());
        assertTrue(r.err().contains("optimizer mfac (ngrads 4, damp 1.0E-4, momentum 0.0): window 4 × "), r.err());
        CliRun.assertUsageError("--optimizer must list adamw and/or mfac, got sgd", with("--optimizer", "sgd"));
        CliRun.assertUsageError("--ngrads is M-FAC's window: it needs --optimizer mfac", with("--ngrads", "4"));
        CliRun.assertUsageError("--peer torch trains with AdamW", with("--optimizer", "mfac", "--peer", "torch"));
    }

    /** --zero 1 shards AdamW's moments among the replicas: the same loss bits with half the moments per replica. */
    @Test
    void zeroShardsTheMomentsAmongTheReplicas() throws Exception {
        String[] two = with("--replicas", "2", "--ceiling", "0");
        two[java.util.Arrays.asList(two).indexOf("--threads") + 1] = "2"; // a thread per replica
        CliRun plain = CliRun.of(two);
        String[] twoZero = java.util.Arrays.copyOf(two, two.length + 2);
        twoZero[two.length] = "--zero";
        twoZero[two.length + 1] = "1";
        CliRun zero = CliRun.of(twoZero);
        assertTrue(zero.err().contains(", sharded (zero 1): "), zero.err());
        assertTrue(!plain.err().contains("sharded"), plain.err());
        assertEquals(plain.err().replaceAll("(?s).*last loss ([0-9.]+).*", "$1"), zero.err().replaceAll("(?s).*last loss ([0-9.]+).*", "$1"));
        CliRun.assertUsageError("--zero: zero must be 0 (off) or 1 (shard the optimizer state), got 2", with("--zero", "2"));
        CliRun.assertUsageError("--zero: zero: 1 shards AdamW's moments by parameter", with("--zero", "1", "--optimizer", "mfac"));
    }

    /**
     * Several optimizers train the same initial model on the same batches of a prepared dataset in one run: one train
     * row each, then a train_step row per side and step with exactly the documented fields. The first step's loss
     * comes before any update, so it is the same bits on both sides; the updates differ, so later losses do too.
     */
    @Test
    void optimizersComparedStepByStepOnAPreparedDataset(@TempDir Path dir) throws Exception {
        Path corpus = dir.resolve("corpus");
        Files.createDirectories(corpus);
        Files.writeString(corpus.resolve("a.txt"), "the cat sat on the mat. the dog sat on the log.\n".repeat(40));
        Path data = dir.resolve("data");
        CliRun prep = CliRun.of("prepare", "--input", corpus.toString(), "--output", data.toString(), "--line-docs",
                "--vocab-size", "300", "--max-len", "32", "--master", "local[1]");
        assertEquals(0, prep.code(), prep.err());
        CliRun r = CliRun.of("bench", "train", "--layers", "1", "--d-model", "16", "--heads", "2", "--seq", "32", "--batch", "2",
                "--steps", "2", "--warmup", "1", "--threads", "1", "--ceiling", "0", "--json", "--optimizer", "adamw,mfac",
                "--ngrads", "2", "--data", data.toString());
        List<JsonNode> rows = r.rows(null);
        assertEquals(List.of("kindling", "kindling mfac"), rows.subList(0, 2).stream().map(j -> j.get("impl").asText()).toList());
        assertEquals(rows.get(0).get("params").asLong(), rows.get(1).get("params").asLong(), "the vocabulary follows the data");
        List<String> lines = List.of(r.out().strip().split("\n"));
        assertEquals(2 + 2 * 3, lines.size(), r.out());
        for (String line : lines.subList(2, lines.size())) {
            assertEquals(List.of("bench", "impl", "step", "timed", "loss", "ms"), CliTest.fieldNames(line), line);
        }
        List<JsonNode> adamw = rows.subList(2, 5);
        List<JsonNode> mfac = rows.subList(5, 8);
        assertEquals(List.of(1, 2, 3), adamw.stream().map(j -> j.get("step").asInt()).toList());
        assertEquals(List.of(false, true, true), mfac.stream().map(j -> j.get("timed").asBoolean()).toList());
        assertEquals(adamw.get(0).get("loss").asDouble(), mfac.get(0).get("loss").asDouble(), 0.0, r.out());
        assertNotEquals(adamw.get(2).get("loss").asDouble(), mfac.get(2).get("loss").asDouble(), r.out());
        assertTrue(r.err().contains("kindling mfac vs kindling after 3 steps: loss "), r.err());
        CliRun.assertUsageError("--optimizer lists adamw twice", with("--optimizer", "adamw,adamw"));
        CliRun.assertUsageError("--lr must be a finite number > 0, got 0.0", with("--lr", "0"));
        CliRun.assertUsageError("--deq builds both models from --layers/--d-model/--heads/--vocab and trains them with AdamW on one "
                + "replica; it does not take --zero", with("--deq", "--zero", "1"));
        CliRun.assertUsageError("--profile counts the kernels of one optimizer's steps", with("--optimizer", "adamw,mfac",
                "--profile"));
        CliRun.assertUsageError("has a vocabulary of", with("--data", data.toString()));
        CliRun.assertUsageError("is not a complete dataset", with("--data", dir.resolve("nothing").toString()));
    }
}
