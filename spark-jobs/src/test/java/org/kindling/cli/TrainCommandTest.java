package org.kindling.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** prepare → train (a Spark barrier stage) → resume → generate, through the CLI. */
class TrainCommandTest {
    @TempDir
    Path dir;

    @Test
    void trainsCheckpointsResumesAndGenerates() throws Exception {
        Path corpus = dir.resolve("corpus");
        Files.createDirectories(corpus);
        Files.writeString(corpus.resolve("a.txt"), "the cat sat on the mat. the dog sat on the log.\n".repeat(40));
        Path data = dir.resolve("data");
        Path run = dir.resolve("run");
        assertEquals(0, CliRun.of("prepare", "--input", corpus.toString(), "--output", data.toString(), "--line-docs", "--vocab-size",
                "300", "--max-len", "128", "--master", "local[2]").code());
        CliRun first = CliRun.of("train", "--config", "tiny", "--data", data.toString(), "--run", run.toString(), "--master", "local[2]",
                "--set", "max_steps=6", "--set", "checkpoint_interval=3", "--set", "batch_tokens=512", "--set", "warmup_steps=2");
        assertEquals(0, first.code(), first.err());
        assertTrue(first.err().contains("step 6"), first.err());
        assertTrue(Files.exists(run.resolve("checkpoints/step-3")) && Files.exists(run.resolve("checkpoints/step-6")));
        int vocab = org.kindling.data.BpeTokenizer.fromJson(Files.readString(data.resolve("tokenizer.json")), "t").vocabSize();
        assertTrue(Files.readString(run.resolve("config.yaml")).contains("vocab: " + vocab + "\n"), "the vocabulary follows the dataset");
        // The resumed run evaluates on the training data itself (it has the run's tokenizer) after step 8, its last.
        CliRun more = CliRun.of("train", "--config", "tiny", "--data", data.toString(), "--run", run.toString(), "--master", "local[2]",
                "--set", "max_steps=8", "--set", "checkpoint_interval=3", "--set", "batch_tokens=512", "--set", "warmup_steps=2",
                "--eval-data", data.toString(), "--set", "eval_interval=5");
        assertEquals(0, more.code(), more.err());
        List<String> metrics = Files.readAllLines(run.resolve("metrics.jsonl"));
        assertEquals(8, metrics.size(), "6 steps, then 2 more after resuming from step-6");
        assertTrue(metrics.get(7).startsWith("{\"step\":8,") && metrics.get(7).contains(",\"eval_loss\":"), metrics.get(7));
        assertTrue(!metrics.get(6).contains("eval_loss"), metrics.get(6));
        assertTrue(more.err().contains("step 8/8 | loss ") && more.err().lines().anyMatch(l -> l.startsWith("trained ")
                && l.contains(" | eval_loss ")), more.err());
        CliRun badEval = CliRun.of("train", "--config", "tiny", "--data", data.toString(), "--run", dir.resolve("run4").toString(),
                "--master", "local[2]", "--eval-data", dir.resolve("no-such-data").toString());
        assertEquals(2, badEval.code());
        assertTrue(badEval.err().contains("--eval-data " + dir.resolve("no-such-data") + ": "), badEval.err());
        CliRun otherModel = CliRun.of("train", "--config", "tiny", "--data", data.toString(), "--run", run.toString(), "--master",
                "local[2]", "--set", "max_steps=10", "--set", "warmup_steps=2", "--set", "batch_tokens=512", "--set", "d_model=32");
        assertEquals(2, otherModel.code(), otherModel.err());
        assertTrue(otherModel.err().contains("holds checkpoints of another model (d_model: 64 -> 32, so "), otherModel.err());
        assertEquals(8, Files.readAllLines(run.resolve("metrics.jsonl")).size(), "nothing trained");
        assertTrue(Files.readString(run.resolve("config.yaml")).contains("d_model: 64"), "the run's config is kept");
        CliRun withDropout = CliRun.of("train", "--config", "tiny", "--data", data.toString(), "--run", run.toString(), "--master",
                "local[2]", "--set", "max_steps=9", "--set", "warmup_steps=2", "--set", "batch_tokens=512", "--set", "dropout=0.1",
                "--set", "checkpoint_interval=3");
        assertEquals(0, withDropout.code(), "dropout changes no tensor, so the run resumes: " + withDropout.err());
        assertEquals(9, Files.readAllLines(run.resolve("metrics.jsonl")).size());
        Path otherCorpus = dir.resolve("other-corpus");
        Files.createDirectories(otherCorpus);
        Files.writeString(otherCorpus.resolve("b.txt"), "a quick brown fox jumps over lazy dogs.\n".repeat(40));
        Path otherData = dir.resolve("other-data");
        assertEquals(0, CliRun.of("prepare", "--input", otherCorpus.toString(), "--output", otherData.toString(), "--line-docs",
                "--vocab-size", "300", "--max-len", "128", "--master", "local[2]").code());
        CliRun otherTokenizer = CliRun.of("train", "--config", "tiny", "--data", otherData.toString(), "--run", run.toString(),
                "--master", "local[2]", "--set", "max_steps=10", "--set", "warmup_steps=2", "--set", "batch_tokens=512");
        assertEquals(2, otherTokenizer.code(), otherTokenizer.err());
        assertTrue(otherTokenizer.err().contains(otherData + " was tokenized with another tokenizer than the run's"),
                otherTokenizer.err());
        CliRun gen = CliRun.of("generate", "--run", run.toString(), "--prompt", "the cat", "--max-new-tokens", "5", "--temperature", "0");
        assertEquals(0, gen.code(), gen.err());
        assertTrue(!gen.out().isBlank());
        CliRun many = CliRun.of("train", "--config", "tiny", "--data", data.toString(), "--run", dir.resolve("run3").toString(),
                "--workers", "3", "--master", "local[2]");
        assertEquals(2, many.code());
        assertTrue(many.err().contains("--workers 3 needs 3 task slots"), many.err());
        CliRun badSet = CliRun.of("train", "--config", "tiny", "--data", data.toString(), "--run", run.toString(), "--set", "lr=fast");
        assertEquals(2, badSet.code());
        assertTrue(badSet.err().contains("train.lr must be a number"), badSet.err());
        CliRun badZero = CliRun.of("train", "--config", "tiny", "--data", data.toString(), "--run", run.toString(), "--zero", "2");
        assertEquals(2, badZero.code());
        assertTrue(badZero.err().contains("train.zero must be 0 (off) or 1 (shard the optimizer state), got 2"), badZero.err());
        CliRun twice = CliRun.of("train", "--config", "tiny", "--data", data.toString(), "--run", run.toString(), "--zero", "1",
                "--set", "zero=1");
        assertEquals(2, twice.code());
        assertTrue(twice.err().contains("--zero and --set zero both set train.zero"), twice.err());
    }
}
