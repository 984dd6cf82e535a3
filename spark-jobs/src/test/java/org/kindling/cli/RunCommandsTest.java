package org.kindling.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.apache.hadoop.conf.Configuration;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.kindling.data.BpeTokenizer;
import org.kindling.data.BpeTrainer;
import org.kindling.models.Gpt;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.RunConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.generate.Generator;
import org.kindling.models.generate.Sampling;
import org.kindling.models.io.Checkpoints;
import org.kindling.models.train.TrainLoop;
import org.kindling.models.train.Trainer;
import org.kindling.ops.Device;
import org.kindling.ops.cpu.CpuDevice;
import org.kindling.train.HadoopRunStorage;
import org.kindling.train.RunDir;

/** generate and export on a run directory made by the training loop. */
class RunCommandsTest {
    @TempDir
    static Path dir;
    static Path run;
    static BpeTokenizer tok;

    @BeforeAll
    static void train() throws Exception {
        String text = "the cat sat on the mat. the dog sat on the log. ";
        Map<String, Long> counts = new HashMap<>();
        BpeTrainer.count(text, counts);
        tok = BpeTrainer.train(counts, 280, List.of(BpeTokenizer.END_OF_TEXT));
        int[] ids = tok.encode(text.repeat(4));
        ModelConfig model = ModelConfig.gpt(tok.vocabSize(), 32, 2, 4, 4, 128, 4, 0, 0.02, 1e-5);
        TrainConfig train = new TrainConfig(1, 3e-3, 3e-4, 5, 40, 0.0, 0.9, 0.95, 1e-8, 1.0, 1, 256, 10, 20, 2);
        run = dir.resolve("run");
        try (Device dev = CpuDevice.open(2); Gpt gpt = new Gpt(model, dev, 1); Trainer t = new Trainer(gpt, train)) {
            DataSource data = DataSource.indexed(p -> TokenBatch.single(java.util.Arrays.copyOf(ids, Math.min(ids.length, 128))));
            TrainLoop.run(t, data, new Checkpoints(new HadoopRunStorage(run.toUri().toString(), new Configuration())),
                    new RunConfig(model, train), r -> { });
        }
        Files.writeString(run.resolve(RunDir.TOKENIZER), tok.toJson());
    }

    @Test
    void generatePrintsOnlyTheContinuation() throws Exception {
        CliRun r = CliRun.of("generate", "--run", run.toString(), "--prompt", "the cat", "--max-new-tokens", "12", "--temperature", "0");
        assertEquals(0, r.code(), r.err());
        String expected;
        try (Device dev = CpuDevice.open(); Gpt model = new RunDir(run.toString(), new Configuration()).model("step-40", dev)) {
            int[] ids = new Generator(model).generate(tok.encode("the cat"), 12, Sampling.greedy(), 0, tok.endOfText());
            assertTrue(ids.length > 0);
            int n = ids[ids.length - 1] == tok.endOfText() ? ids.length - 1 : ids.length;
            expected = tok.decode(java.util.Arrays.copyOf(ids, n));
        }
        assertEquals(expected + System.lineSeparator(), r.out());
        assertTrue(r.err().contains("step-40"), r.err());
        try (Device dev = CpuDevice.open(); Gpt model = new RunDir(run.toString(), new Configuration()).model("step-40", dev)) {
            assertEquals(expected, RunDir.continuation(model, tok, "the cat", 12, Sampling.greedy(), 0));
        }
        CliRun sampled = CliRun.of("generate", "--run", run.toString(), "--prompt", "", "--temperature", "0.8", "--top-k", "20", "--seed", "3");
        assertEquals(0, sampled.code(), sampled.err());
        assertEquals(sampled.out(), CliRun.of("generate", "--run", run.toString(), "--prompt", "", "--temperature", "0.8", "--top-k", "20",
                "--seed", "3").out(), "seeded sampling repeats");
        CliRun older = CliRun.of("generate", "--run", run.toString(), "--step", "20", "--temperature", "0");
        assertEquals(0, older.code(), older.err());
        CliRun missing = CliRun.of("generate", "--run", run.toString(), "--step", "7");
        assertEquals(1, missing.code());
        assertTrue(missing.err().contains("no checkpoint at step 7"), missing.err());
    }

    @Test
    void evalReportsLossAndPerplexityOnADatasetOfTheRunsTokenizer() throws Exception {
        Path corpus = dir.resolve("corpus");
        Files.createDirectories(corpus);
        Files.writeString(corpus.resolve("a.txt"), "the cat sat on the mat. the dog sat on the log.\n".repeat(30));
        Path data = dir.resolve("data");
        CliRun prep = CliRun.of("prepare", "--input", corpus.toString(), "--output", data.toString(), "--line-docs", "--tokenizer",
                run.resolve(RunDir.TOKENIZER).toString(), "--max-len", "128", "--master", "local[1]");
        assertEquals(0, prep.code(), prep.err());
        CliRun r = CliRun.of("eval", "--run", run.toString(), "--data", data.toString());
        assertEquals(0, r.code(), r.err());
        java.util.regex.Matcher m = java.util.regex.Pattern.compile("loss (\\S+) perplexity (\\S+) \\(").matcher(r.out());
        assertTrue(m.find(), r.out());
        double loss = Double.parseDouble(m.group(1));
        assertTrue(loss > 0 && loss < Math.log(tok.vocabSize()), "a trained model beats uniform guessing: " + r.out());
        assertEquals(Math.exp(loss), Double.parseDouble(m.group(2)), 0.01 * Math.exp(loss));
        assertTrue(r.out().contains("predicted tokens in"), r.out());
        CliRun other = CliRun.of("eval", "--run", run.toString(), "--data", dir.resolve("nowhere").toString());
        assertEquals(1, other.code());
        assertTrue(other.err().contains("no manifest.json"), other.err());
    }

    @Test
    void exportWritesATransformersDirectory() throws Exception {
        Path out = dir.resolve("hf");
        CliRun r = CliRun.of("export", "--run", run.toString(), "--format", "hf-gpt2", "--out", out.toString());
        assertEquals(0, r.code(), r.err());
        JsonNode config = new ObjectMapper().readTree(out.resolve("config.json").toFile());
        assertEquals(tok.vocabSize(), config.get("vocab_size").asInt());
        assertEquals(tok.endOfText(), config.get("eos_token_id").asInt());
        assertEquals(tok.toJson(), Files.readString(out.resolve("tokenizer.json")));
        assertTrue(Files.size(out.resolve("model.safetensors")) > 4L * 32 * tok.vocabSize());
        CliRun bad = CliRun.of("export", "--run", run.toString(), "--format", "onnx", "--out", out.toString());
        assertEquals(2, bad.code());
        CliRun noTokenizer = CliRun.of("generate", "--run", dir.resolve("nowhere").toString());
        assertEquals(1, noTokenizer.code());
        assertTrue(noTokenizer.err().contains("no checkpoint yet") || noTokenizer.err().contains("tokenizer"), noTokenizer.err());
        List<String> names = new ArrayList<>();
        try (var s = Files.list(out)) {
            s.forEach(p -> names.add(p.getFileName().toString()));
        }
        names.sort(null);
        assertEquals(List.of("config.json", "model.safetensors", "tokenizer.json"), names);
    }
}
