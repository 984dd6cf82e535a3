package org.kindling.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import org.junit.jupiter.api.Test;
import org.kindling.ops.Device;

class CliTest {
    @Test
    void versionNamesTheBuildAndTheGemm() {
        CliRun r = CliRun.of("version");
        assertEquals(0, r.code(), r.err());
        assertTrue(r.out().startsWith("kindling " + BuildInfo.version()), r.out());
        assertTrue(r.out().contains("cpu gemm "), r.out());
        String cuda = "cuda" + Device.provider("cuda").unavailable().map(why -> " (unavailable: " + why + ")").orElse("");
        assertTrue(r.out().contains("\ndevices cpu, " + cuda + ", reference\n"), r.out());
        assertTrue(r.out().contains("spark " + BuildInfo.sparkVersion() + " (built against"), "Spark is on the test classpath: " + r.out());
        assertEquals("kindling " + BuildInfo.version(), CliRun.of("--version").out().trim());
    }

    @Test
    void everyCommandHasHelp() {
        for (String[] cmd : new String[][] {{"--help"}, {"version", "--help"}, {"bench", "--help"}, {"bench", "gemm", "--help"},
            {"bench", "attention", "--help"}, {"bench", "train", "--help"}, {"bench", "recall", "--help"}, {"bench", "moe", "--help"},
            {"bench", "linear", "--help"},
            {"prepare", "--help"}, {"bench", "tokenize", "--help"}, {"generate", "--help"}, {"export", "--help"},
            {"eval", "--help"}, {"train", "--help"}, {"quickstart", "--help"}}) {
            CliRun r = CliRun.of(cmd);
            assertEquals(0, r.code(), String.join(" ", cmd));
            assertTrue(r.out().contains("Usage:"), r.out());
        }
        assertTrue(CliRun.of("--help").out().contains("bench"));
    }

    @Test
    void benchGemmJsonHasExactlyTheIssueFields() throws Exception {
        CliRun r = CliRun.of("bench", "gemm", "--m", "67", "--n", "45", "--k", "33", "--threads", "2", "--seconds", "0.05", "--json");
        assertEquals(0, r.code(), r.err());
        String[] lines = r.out().strip().split("\n");
        assertEquals(1, lines.length, r.out());
        JsonNode row = new ObjectMapper().readTree(lines[0]);
        List<String> names = new ArrayList<>();
        row.fieldNames().forEachRemaining(names::add);
        assertEquals(List.of("bench", "m", "n", "k", "threads", "gflops", "naive_gflops", "impl", "median_gflops",
                "naive_median_gflops", "max_rel_error"), names);
        assertEquals("gemm", row.get("bench").asText());
        assertEquals(67, row.get("m").asInt());
        assertEquals(45, row.get("n").asInt());
        assertEquals(33, row.get("k").asInt());
        assertEquals(2, row.get("threads").asInt());
        assertTrue(row.get("gflops").asDouble() > 0);
        assertTrue(row.get("naive_gflops").asDouble() > 0);
        assertTrue(List.of("openblas", "native", "vector", "java").contains(row.get("impl").asText()));
        assertTrue(row.get("median_gflops").asDouble() > 0 && row.get("median_gflops").asDouble() <= row.get("gflops").asDouble());
        double err = row.get("max_rel_error").asDouble();
        assertTrue(err >= 0 && err <= GemmBench.MAX_REL_ERROR, lines[0]);
        assertTrue(r.err().contains("GFLOP/s"), "the human-readable line goes to stderr");
    }

    @Test
    void benchGemmBrgemmJsonHasItsFieldsAndChecksItsOptions() throws Exception {
        CliRun r = CliRun.of("bench", "gemm", "--m", "37", "--n", "19", "--k", "23", "--brgemm", "5", "--threads", "2",
                "--seconds", "0.05", "--json");
        assertEquals(0, r.code(), r.err());
        String[] lines = r.out().strip().split("\n");
        assertEquals(1, lines.length, r.out());
        JsonNode row = new ObjectMapper().readTree(lines[0]);
        List<String> names = new ArrayList<>();
        row.fieldNames().forEachRemaining(names::add);
        assertEquals(List.of("bench", "m", "n", "k", "count", "threads", "impl", "brgemm_gflops", "big_gemm_gflops",
                "separate_gflops", "max_rel_error"), names);
        assertEquals("gemm_brgemm", row.get("bench").asText());
        assertEquals(5, row.get("count").asInt());
        assertTrue(row.get("brgemm_gflops").asDouble() > 0 && row.get("big_gemm_gflops").asDouble() > 0
                && row.get("separate_gflops").asDouble() > 0, lines[0]);
        assertTrue(row.get("max_rel_error").asDouble() <= GemmBench.MAX_REL_ERROR, lines[0]);
        assertTrue(r.err().contains("brgemm / big GEMM"), r.err());
        CliRun zero = CliRun.of("bench", "gemm", "--brgemm", "0");
        assertTrue(zero.code() != 0 && zero.err().contains("--brgemm must be at least 1"), zero.err());
        CliRun bf16 = CliRun.of("bench", "gemm", "--brgemm", "2", "--dtype", "bf16");
        assertTrue(bf16.code() != 0 && bf16.err().contains("--brgemm compares"), bf16.err());
    }

    @Test
    void benchAttentionJsonHasExactlyTheIssueFields() throws Exception {
        CliRun r = CliRun.of("bench", "attention", "--seq", "300", "--heads", "2", "--head-dim", "59", "--reps", "1", "--json");
        assertEquals(0, r.code(), r.err());
        String[] lines = r.out().strip().split("\n");
        assertEquals(1, lines.length, r.out());
        JsonNode row = new ObjectMapper().readTree(lines[0]);
        List<String> names = new ArrayList<>();
        row.fieldNames().forEachRemaining(names::add);
        assertEquals(List.of("bench", "seq", "heads", "head_dim", "causal", "fwd_ms", "fwd_bwd_ms", "naive_fwd_ms",
                "naive_fwd_bwd_ms", "gflops_fwd_bwd", "extra_bytes", "naive_extra_bytes", "fwd_median_ms", "fwd_bwd_median_ms",
                "naive_fwd_median_ms", "naive_fwd_bwd_median_ms", "impl"), names);
        assertEquals("attention", row.get("bench").asText());
        assertEquals(300, row.get("seq").asInt());
        assertEquals(59, row.get("head_dim").asInt());
        assertTrue(row.get("causal").asBoolean());
        assertTrue(row.get("fwd_bwd_ms").asDouble() > 0 && row.get("naive_fwd_bwd_ms").asDouble() > 0, lines[0]);
        // The naive path holds both heads' 300x300 probabilities; the fused one much less.
        assertTrue(row.get("naive_extra_bytes").asLong() >= 2L * 300 * 300 * 4, lines[0]);
        assertTrue(row.get("extra_bytes").asLong() < row.get("naive_extra_bytes").asLong(), lines[0]);

        CliRun nc = CliRun.of("bench", "attention", "--seq", "64", "--no-causal", "--reps", "1", "--json");
        assertEquals(0, nc.code(), nc.err());
        assertTrue(!new ObjectMapper().readTree(nc.out().strip()).get("causal").asBoolean());
        CliRun bad = CliRun.of("bench", "attention", "--head-dim", "300");
        assertEquals(2, bad.code());
        assertTrue(bad.err().contains("head dim"), bad.err());
    }

    static List<String> fieldNames(String jsonLine) throws Exception {
        JsonNode row = new ObjectMapper().readTree(jsonLine);
        List<String> names = new ArrayList<>();
        row.fieldNames().forEachRemaining(names::add);
        return names;
    }

    @Test
    void benchTrainJsonHasExactlyTheIssueFields() throws Exception {
        CliRun r = CliRun.of("bench", "train", "--layers", "1", "--d-model", "32", "--heads", "2", "--vocab", "50", "--seq", "16",
                "--batch", "2", "--steps", "2", "--warmup", "1", "--json");
        assertEquals(0, r.code(), r.err());
        String line = r.out().strip();
        assertEquals(List.of("bench", "params", "seq", "batch", "tokens_per_s", "ms_per_step", "fwd_ms", "bwd_ms", "opt_ms", "impl",
                "active_params", "peak_mb"),
                fieldNames(line));
        JsonNode row = new ObjectMapper().readTree(line);
        assertEquals("train", row.get("bench").asText());
        assertTrue(row.get("tokens_per_s").asDouble() > 0);
        assertTrue(row.get("peak_mb").asDouble() > 0);
        CliRun preset = CliRun.of("bench", "train", "--preset", "tiny", "--seq", "16", "--batch", "2", "--steps", "1", "--warmup", "0");
        assertEquals(0, preset.code(), preset.err());
        assertTrue(preset.err().contains("L=2 C=64"), preset.err());
        CliRun missing = CliRun.of("bench", "train", "--preset", "no-such-preset");
        assertEquals(2, missing.code());
        assertTrue(missing.err().contains("no-such-preset"), missing.err());
    }

    @Test
    void benchRecallJsonHasExactlyTheIssueFields() throws Exception {
        CliRun r = CliRun.of("bench", "recall", "--task", "induction-head", "--steps", "3", "--json");
        assertEquals(0, r.code(), r.err());
        String line = r.out().strip();
        assertEquals(List.of("bench", "task", "mixer", "steps", "accuracy", "params", "active_params"), fieldNames(line));
        JsonNode row = new ObjectMapper().readTree(line);
        assertEquals("induction-head", row.get("task").asText());
        assertEquals("attention", row.get("mixer").asText());
        assertEquals(3, row.get("steps").asInt());
        double acc = row.get("accuracy").asDouble();
        assertTrue(acc >= 0 && acc <= 1, line);
        CliRun bad = CliRun.of("bench", "recall", "--mixer", "rnn");
        assertEquals(2, bad.code());
        assertTrue(bad.err().contains("\"rnn\""), bad.err());
        CliRun task = CliRun.of("bench", "recall", "--task", "copy");
        assertEquals(2, task.code());
        assertTrue(task.err().contains("unknown task \"copy\""), task.err());
    }

    @Test
    void prepareWritesADatasetAndPrintsItsFigures(@org.junit.jupiter.api.io.TempDir java.nio.file.Path dir) throws Exception {
        java.nio.file.Path in = dir.resolve("in");
        java.nio.file.Files.createDirectories(in);
        java.nio.file.Files.writeString(in.resolve("a.txt"), "one line of text\nanother line\n\nlast line\n");
        java.nio.file.Path out = dir.resolve("ds");
        CliRun r = CliRun.of("prepare", "--input", in.toString(), "--output", out.toString(), "--line-docs", "--vocab-size", "300",
                "--max-len", "128", "--master", "local[1]");
        assertEquals(0, r.code(), r.err());
        assertTrue(r.err().contains("prepared " + out + ": 3 documents"), r.err());
        assertTrue(r.err().contains("documents/s") && r.err().contains("MB/s") && r.err().contains("tokens/s"), r.err());
        JsonNode m = new ObjectMapper().readTree(out.resolve("manifest.json").toFile());
        assertEquals(1, m.get("rejects").get("empty").asInt());
        CliRun again = CliRun.of("prepare", "--input", in.toString(), "--output", out.toString(), "--vocab-size", "300", "--master", "local[1]");
        assertEquals(1, again.code());
        assertTrue(again.err().contains("--overwrite"), again.err());
        CliRun bad = CliRun.of("prepare", "--input", in.toString(), "--output", out.toString(), "--format", "csv");
        assertEquals(2, bad.code());
        assertTrue(bad.err().contains("--format must be text, jsonl or parquet"), bad.err());
        CliRun badInterval = CliRun.of("prepare", "--input", in.toString(), "--output", out.toString(), "--progress-interval", "soon");
        assertEquals(2, badInterval.code());
        assertTrue(badInterval.err().contains("--progress-interval must be a duration such as 10s or 500ms, got 'soon'"),
                badInterval.err());
        CliRun badSplit = CliRun.of("prepare", "--input", in.toString(), "--output", out.toString(), "--split-bytes", "0");
        assertEquals(2, badSplit.code());
        assertTrue(badSplit.err().contains("--split-bytes must be positive, got '0'"), badSplit.err());
        java.nio.file.Path split = dir.resolve("split");
        CliRun r2 = CliRun.of("prepare", "--input", in.toString(), "--output", split.toString(), "--line-docs", "--vocab-size", "300",
                "--max-len", "128", "--master", "local[1]", "--split-bytes", "8b");
        assertEquals(0, r2.code(), r2.err());
        assertTrue(r2.err().contains("prepared " + split + ": 3 documents"), r2.err());
    }

    @Test
    void benchTokenizeJsonHasExactlyTheIssueFields(@org.junit.jupiter.api.io.TempDir java.nio.file.Path dir) throws Exception {
        // Lines of different lengths: a peer that pads a batch to its longest document would not agree.
        String text = "Tokenizers split text into pieces. Pieces become ids; ids become text again. 12345 🎉\nshort\n".repeat(25);
        java.util.Map<String, Long> counts = new java.util.HashMap<>();
        org.kindling.data.BpeTrainer.count(text, counts);
        java.nio.file.Path tok = dir.resolve("tokenizer.json");
        java.nio.file.Files.writeString(tok, org.kindling.data.BpeTrainer.train(counts, 300,
                List.of(org.kindling.data.BpeTokenizer.END_OF_TEXT)).toJson());
        java.nio.file.Path in = dir.resolve("in.txt");
        java.nio.file.Files.writeString(in, text);
        CliRun r = CliRun.of("bench", "tokenize", "--tokenizer", tok.toString(), "--input", in.toString(), "--seconds", "0.05", "--json");
        assertEquals(0, r.code(), r.err());
        String line = r.out().strip();
        assertEquals(List.of("bench", "mb_per_s", "peer_mb_per_s", "tokens", "agree", "median_mb_per_s", "peer_median_mb_per_s",
                "threads", "documents", "timed_documents", "timed_mb"), fieldNames(line));
        JsonNode row = new ObjectMapper().readTree(line);
        assertTrue(row.get("agree").asBoolean(), line);
        assertTrue(row.get("mb_per_s").asDouble() > 0 && row.get("peer_mb_per_s").asDouble() > 0, line);
        assertEquals(50, row.get("documents").asInt(), "one document per line");
        assertEquals(25, row.get("timed_documents").asInt(), "the second half is timed, the first warms up");
        assertTrue(r.err().contains("batchEncode"), "says what each side computes: " + r.err());

        // Invalid UTF-8: a clear error naming the file and the offset of the first bad byte, no usage text.
        java.nio.file.Path bad = dir.resolve("bad.txt");
        byte[] ok = "fine line\nsecond line\n".getBytes(java.nio.charset.StandardCharsets.UTF_8);
        byte[] bytes = java.util.Arrays.copyOf(ok, ok.length + 3);
        bytes[ok.length] = 'a';
        bytes[ok.length + 1] = (byte) 0xC3; // a two-byte lead followed by a byte that cannot continue it
        bytes[ok.length + 2] = '(';
        java.nio.file.Files.write(bad, bytes);
        CliRun b = CliRun.of("bench", "tokenize", "--tokenizer", tok.toString(), "--input", bad.toString(), "--seconds", "0");
        assertEquals(1, b.code(), b.err());
        assertTrue(b.err().contains(bad + " is not valid UTF-8: the byte sequence at byte offset " + (ok.length + 1)
                + " (first byte 0xc3) is malformed"), b.err());
        assertTrue(!b.err().contains("Usage:") && !b.err().contains("Input length"), b.err());
    }

    @Test
    void humanOutputOnlyWithoutJson() {
        CliRun r = CliRun.of("bench", "gemm", "--m", "8", "--n", "8", "--k", "8", "--seconds", "0.01");
        assertEquals(0, r.code(), r.err());
        assertEquals("", r.out());
        assertTrue(r.err().contains("gemm 8x8x8"), r.err());
    }

    @Test
    void badOptionsAreUsageErrorsThatNameTheOption() {
        CliRun r = CliRun.of("bench", "gemm", "--m", "0");
        assertEquals(2, r.code());
        assertTrue(r.err().contains("--m must be at least 1"), r.err());
        CliRun t = CliRun.of("bench", "gemm", "--threads", "0");
        assertEquals(2, t.code());
        assertTrue(t.err().contains("--threads"), t.err());
        CliRun u = CliRun.of("bench", "gemm", "--bogus");
        assertEquals(2, u.code());
        assertTrue(u.err().contains("--bogus"), u.err());
        assertEquals(2, CliRun.of("bench").code());
        assertEquals(2, CliRun.of().code());
    }

    @Test
    void deviceOptionPicksTheDeviceAndFoldsThreads() throws Exception {
        String[] gemm = {"bench", "gemm", "--m", "9", "--n", "7", "--k", "5", "--seconds", "0.01", "--json"};
        JsonNode cpu = CliRun.of(concat(gemm, "--device", "cpu:2")).rows(null).get(0);
        assertEquals(2, cpu.get("threads").asInt());
        JsonNode reference = CliRun.of(concat(gemm, "--device", "reference")).rows(null).get(0);
        assertEquals(1, reference.get("threads").asInt());
        assertEquals("reference", reference.get("impl").asText());
    }

    @Test
    void benchGemmOffTheCpuChecksAgainstTheHostBlasWithoutTheLoop() throws Exception {
        CliRun r = CliRun.of("bench", "gemm", "--m", "13", "--n", "11", "--k", "9", "--seconds", "0.01", "--device", "reference",
                "--dtype", "fp32", "--json");
        assertEquals(0, r.code(), r.err());
        JsonNode row = r.rows(null).get(0);
        List<String> names = new ArrayList<>();
        row.fieldNames().forEachRemaining(names::add);
        assertEquals(List.of("bench", "m", "n", "k", "threads", "gflops", "naive_gflops", "impl", "median_gflops",
                "naive_median_gflops", "max_rel_error"), names);
        assertTrue(row.get("naive_gflops").isNull() && row.get("naive_median_gflops").isNull(), row.toString());
        assertEquals("reference", row.get("impl").asText());
        assertTrue(row.get("max_rel_error").asDouble() <= 1e-6, row.toString());
        assertTrue(r.err().contains("C_host") && r.err().contains("--peer torch") && !r.err().contains("plain i-k-j loop"), r.err());
    }

    @Test
    void benchGemmDtypeIsCheckedAndBf16IsNotForTheCpu() {
        String[] gemm = {"bench", "gemm", "--m", "8", "--n", "8", "--k", "8", "--seconds", "0.01"};
        CliRun.assertUsageError("--dtype must be fp32 or bf16, got fp16", concat(gemm, "--dtype", "fp16"));
        CliRun.assertUsageError("--dtype bf16 benchmarks a device with a bf16 GEMM (cuda); the CPU widens bf16 operands to fp32 "
                + "and runs its fp32 GEMM, which --dtype fp32 measures", concat(gemm, "--dtype", "bf16", "--threads", "2"));
        CliRun fp32 = CliRun.of(concat(gemm, "--dtype", "fp32", "--threads", "2"));
        assertEquals(0, fp32.code(), fp32.err());
        assertTrue(fp32.err().contains("gemm 8x8x8 fp32") && fp32.err().contains("plain i-k-j loop"), fp32.err());
    }

    @Test
    void badDeviceSpecsAreUsageErrorsWithTheReason() {
        String[] gemm = {"bench", "gemm", "--m", "8", "--n", "8", "--k", "8", "--seconds", "0.01"};
        CliRun.assertUsageError("no device \"tpu\" in this build (spec \"tpu:0\"); known: cpu, cuda, reference",
                concat(gemm, "--device", "tpu:0"));
        // The cuda provider is in the build; without a GPU it says why (a GPU machine opens it instead).
        Optional<String> noGpu = Device.provider("cuda").unavailable();
        if (noGpu.isPresent()) {
            CliRun.assertUsageError("--device cuda:0 is unavailable here: " + noGpu.get(), concat(gemm, "--device", "cuda:0"));
        }
        CliRun.assertUsageError("--device cpu:4 and --threads 2 both set the CPU threads", concat(gemm, "--device", "cpu:4", "--threads", "2"));
        CliRun.assertUsageError("--threads 2 is for the CPU, not --device reference", concat(gemm, "--device", "reference", "--threads", "2"));
        CliRun.assertUsageError("device \"cpu:0\": the argument is the thread count", concat(gemm, "--device", "cpu:0"));
        CliRun.assertUsageError("device \"cpu:x\": the argument is the thread count", concat(gemm, "--device", "cpu:x"));
        CliRun.assertUsageError("bench tokenize runs on the CPU only, not --device reference", "bench", "tokenize", "--tokenizer",
                "/nonexistent/tokenizer.json", "--input", "/nonexistent/input.txt", "--device", "reference");
        CliRun.assertUsageError("no device \"tpu\"", "eval", "--run", "/nonexistent/run", "--data", "/nonexistent/data", "--device", "tpu");
        CliRun.assertUsageError("no device \"tpu\"", "generate", "--run", "/nonexistent/run", "--device", "tpu");
        // train checks before it starts Spark: no session, no dataset read.
        CliRun.assertUsageError("no device \"tpu\" in this build", "train", "--config", "tiny", "--data", "/nonexistent/data",
                "--run", "/nonexistent/run", "--device", "tpu");
        CliRun.assertUsageError("--cpu-fallback is for a GPU device", "train", "--config", "tiny", "--data", "/nonexistent/data",
                "--run", "/nonexistent/run", "--cpu-fallback");
        CliRun.assertUsageError("--workers 3 is not a multiple of --pipeline-stages 2", "train", "--config", "tiny", "--data",
                "/nonexistent/data", "--run", "/nonexistent/run", "--workers", "3", "--pipeline-stages", "2");
        CliRun.assertUsageError("--pipeline-policy: pipeline policy must be one of 1f1b, 1f1b-recompute, stage-aware, shifted, got "
                + "'gpipe'", "train", "--config", "tiny", "--data", "/nonexistent/data", "--run", "/nonexistent/run", "--workers", "2",
                "--pipeline-stages", "2", "--pipeline-policy", "gpipe");
        CliRun.assertUsageError("--pipeline-policy shifted needs --pipeline-stages of 2 or more", "train", "--config", "tiny",
                "--data", "/nonexistent/data", "--run", "/nonexistent/run", "--pipeline-policy", "shifted");
        CliRun.assertUsageError("--pipeline-order: pipeline order must be one of static, message-driven, got 'eager'", "train",
                "--config", "tiny", "--data", "/nonexistent/data", "--run", "/nonexistent/run", "--workers", "2",
                "--pipeline-stages", "2", "--pipeline-order", "eager");
    }

    private static String[] concat(String[] a, String... b) {
        String[] all = java.util.Arrays.copyOf(a, a.length + b.length);
        System.arraycopy(b, 0, all, a.length, b.length);
        return all;
    }
}
