package org.kindling.cli;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The linear-time mixers everywhere a model goes, through the CLI: trained by `kindling train` on
 * one and two workers, resumed bit-identically after losing the newest checkpoint, generated from with a
 * batch of prompts, evaluated, and refused by the GPT-2 export.
 */
class MixerTrainCommandTest {
    @TempDir
    static Path dir;
    static Path data;

    @BeforeAll
    static void prepare() throws Exception {
        Path corpus = dir.resolve("corpus");
        Files.createDirectories(corpus);
        Files.writeString(corpus.resolve("a.txt"), "the cat sat on the mat. the dog sat on the log.\n".repeat(40));
        data = dir.resolve("data");
        CliRun prep = CliRun.of("prepare", "--input", corpus.toString(), "--output", data.toString(), "--line-docs", "--vocab-size",
                "300", "--max-len", "128", "--master", "local[2]");
        assertEquals(0, prep.code(), prep.err());
    }

    private static CliRun train(Path config, Path run) {
        return train(config, run, 2);
    }

    private static CliRun train(Path config, Path run, int workers) {
        return CliRun.of("train", "--config", config.toString(), "--data", data.toString(), "--run", run.toString(), "--master",
                "local[2]", "--workers", String.valueOf(workers));
    }

    /** H3 with attention in one layer, as the H3 paper's hybrids have. */
    @Test
    void anH3Hybrid() throws Exception {
        trainsResumesGeneratesAndEvaluates("hybrid", 2, "[{type: h3, d_state: 8}, attention]", "pos_emb: none\n",
                "pos_emb is none; the GPT-2 format needs learned position embeddings");
    }

    /** The other linear-time mixers, Performer redrawing its features every other step. */
    @Test
    void s4dPerformerAndLinearAttention() throws Exception {
        trainsResumesGeneratesAndEvaluates("linear-time", 3, "[{type: s4d, d_state: 8}, {type: performer, redraw: 2}, linear]",
                "pos_emb: none\n", "pos_emb is none; the GPT-2 format needs learned position embeddings");
    }

    /**
     * A mixture of experts (top-2 of 4, with router jitter) every other layer: its metrics reach the
     * progress line and metrics.jsonl, and a resumed run redraws the same jitter.
     */
    @Test
    void mixtureOfExpertsEveryOtherLayer() throws Exception {
        trainsResumesGeneratesAndEvaluates("moe", 2, "attention",
                "max_seq: 128\nchannel_mixer: [mlp, {type: moe, experts: 4, hidden: 48, k: 2, jitter: 0.01}]\n",
                "layer 1 uses attention + moe; the GPT-2 format holds attention + mlp layers only");
    }

    /**
     * Issue 17's attention approximations: Skeinformer's causal sketch (8 columns of sequences up to
     * 128 tokens, so the sketched path runs and its draws must repeat on resume) and learned-kernel
     * attention with its trained spectral mixture.
     */
    @Test
    void sketchedAndLearnedKernelAttention() throws Exception {
        trainsResumesGeneratesAndEvaluates("approximate", 2, "[{type: skein, samples: 8}, {type: kernelized, kernel: gmm-prf}]",
                "pos_emb: none\n", "pos_emb is none; the GPT-2 format needs learned position embeddings");
    }

    /**
     * Issue 17's deep equilibrium model: one block solved to its fixed point, the first step trained
     * unrolled; its solver metrics reach metrics.jsonl and a resumed run repeats every iterate.
     */
    @Test
    void deepEquilibrium() throws Exception {
        trainsResumesGeneratesAndEvaluates("deq", 1, "attention", "max_seq: 128\ndeq: {max_iter: 12, pretrain_steps: 1, pretrain_iter: 3}\n",
                "deq: a deep equilibrium model solves one block to its fixed point");
    }

    /**
     * Issue 16's structured layers together: Scaling Transformers' multiplicative q, k, v and
     * sparse FFN, a gated pixelfly MLP, a flat-butterfly attention mask and butterfly projections.
     */
    @Test
    void structuredSparseLayers() throws Exception {
        trainsResumesGeneratesAndEvaluates("structured", 3,
                "[{type: attention, qkv: multiplicative, qkv_modules: 4}, {type: attention, mask: flat_butterfly, mask_butterfly_size: 2},"
                        + " {type: attention, linear: butterfly}]",
                "max_seq: 256\nchannel_mixer: [{type: sparse_ffn, block: 8}, {type: mlp, linear: pixelfly, pixelfly_block: 8,"
                        + " pixelfly_rank: 4, pixelfly_gate: true}, mlp]\n",
                "layer 0 uses attention + sparse_ffn; the GPT-2 format holds attention + mlp layers only");
    }

    private void trainsResumesGeneratesAndEvaluates(String name, int layers, String mixers, String extra, String exportRefusal)
            throws Exception {
        Path config = dir.resolve(name + ".yaml");
        Files.writeString(config, "vocab: 300\nd_model: 32\nn_layer: " + layers + "\nn_head: 4\n" + extra + "mixer: " + mixers + "\n"
                + "train:\n  max_steps: 4\n  checkpoint_interval: 2\n  batch_tokens: 512\n  warmup_steps: 1\n  lr: 3.0e-3\n");
        Path run = dir.resolve("run-" + name);
        CliRun first = train(config, run);
        assertEquals(0, first.code(), first.err());
        byte[] straight = Files.readAllBytes(run.resolve("checkpoints/step-4/model.safetensors"));
        List<String> metrics = Files.readAllLines(run.resolve("metrics.jsonl"));
        assertEquals(4, metrics.size());
        if (name.equals("deq")) {
            assertTrue(metrics.get(0).contains("\"deq_fwd_iters\":3"), "step 1 is unrolled: " + metrics.get(0));
            assertFalse(metrics.get(0).contains("deq_bwd_iters"), metrics.get(0));
            for (String field : List.of("deq_fwd_iters", "deq_fwd_residual", "deq_bwd_iters", "deq_bwd_residual")) {
                assertTrue(metrics.get(3).contains("\"" + field + "\":"), field + " in " + metrics.get(3));
            }
        }
        if (name.equals("moe")) {
            for (String field : List.of("moe_balance_loss", "moe_dropped_fraction", "moe_load_imbalance", "moe_z_loss")) {
                assertTrue(metrics.get(3).contains("\"" + field + "\":"), field + " in " + metrics.get(3));
                assertTrue(first.err().contains("| " + field + " "), field + " on the progress line: " + first.err());
            }
        }

        // Lose everything after step 2, as a crash right after that checkpoint would, and train again.
        Path step4 = run.resolve("checkpoints/step-4");
        try (var files = Files.walk(step4)) {
            files.sorted(java.util.Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
        }
        writeLatest(run, "step-2");
        CliRun again = train(config, run);
        assertEquals(0, again.code(), again.err());
        assertTrue(again.err().contains("(2 step(s) after step 2)"), "resumed from step-2: " + again.err());
        assertArrayEquals(straight, Files.readAllBytes(run.resolve("checkpoints/step-4/model.safetensors")),
                mixers + ": a resumed run must end bit-identical to an uninterrupted one");
        assertEquals(metrics.stream().map(MixerTrainCommandTest::withoutSpeed).toList(),
                Files.readAllLines(run.resolve("metrics.jsonl")).stream().map(MixerTrainCommandTest::withoutSpeed).toList());

        CliRun single = train(config, dir.resolve("run-" + name + "-1"), 1);
        assertEquals(0, single.code(), single.err());
        assertTrue(single.err().contains("step 4,"), single.err());

        if (name.equals("hybrid")) {
            // A LATEST naming no checkpoint stops the run before any task starts, with the reason.
            Path broken = dir.resolve("run-broken");
            org.apache.commons.io.FileUtils.copyDirectory(run.toFile(), broken.toFile());
            writeLatest(broken, "step-9");
            CliRun refused = train(config, broken);
            assertEquals(1, refused.code(), refused.err());
            assertTrue(refused.err().contains("names \"step-9\", which is not a complete checkpoint"), refused.err());
            assertFalse(refused.err().contains("rendezvous failed"), "the driver refused it, not the workers: " + refused.err());
        }

        CliRun gen = CliRun.of("generate", "--run", run.toString(), "--prompt", "the cat", "--prompt", "", "--prompt", "the dog sat on",
                "--max-new-tokens", "6", "--temperature", "0", "--json");
        assertEquals(0, gen.code(), gen.err());
        List<String> lines = gen.out().lines().toList();
        assertEquals(3, lines.size(), gen.out());
        assertTrue(lines.get(2).startsWith("{\"prompt\":\"the dog sat on\",\"text\":"), lines.get(2));
        CliRun alone = CliRun.of("generate", "--run", run.toString(), "--prompt", "the dog sat on", "--max-new-tokens", "6",
                "--temperature", "0", "--json");
        assertEquals(lines.get(2), alone.out().strip(), "a prompt continues in a batch as it does alone");

        CliRun eval = CliRun.of("eval", "--run", run.toString(), "--data", data.toString());
        assertEquals(0, eval.code(), eval.err());
        Matcher m = Pattern.compile("loss (\\S+) perplexity").matcher(eval.out());
        assertTrue(m.find(), eval.out());
        assertTrue(Double.parseDouble(m.group(1)) < Math.log(300), eval.out());

        CliRun export = CliRun.of("export", "--run", run.toString(), "--format", "hf-gpt2", "--out", dir.resolve("hf-" + name).toString());
        assertEquals(1, export.code(), export.err());
        assertTrue(export.err().contains(exportRefusal), export.err());
    }

    /** Points a run's LATEST at {@code name} through the Hadoop FileSystem, as a run does (the local one keeps a checksum beside each file). */
    private static void writeLatest(Path run, String name) throws java.io.IOException {
        try (var out = org.apache.hadoop.fs.FileSystem.getLocal(new org.apache.hadoop.conf.Configuration())
                .create(new org.apache.hadoop.fs.Path(run.resolve("checkpoints/LATEST").toString()), true)) {
            out.write((name + "\n").getBytes(java.nio.charset.StandardCharsets.UTF_8));
        }
    }

    /** A metrics line without its speed, which differs between runs. */
    private static String withoutSpeed(String line) {
        return line.replaceAll(",\"tokens_per_s\":[0-9.]+", "");
    }
}
