package org.kindling.train;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.util.List;
import org.apache.hadoop.conf.Configuration;
import org.kindling.data.BpeTokenizer;
import org.kindling.models.Gpt;
import org.kindling.models.config.RunConfig;
import org.kindling.models.generate.Generator;
import org.kindling.models.generate.Sampling;
import org.kindling.models.io.Checkpoints;
import org.kindling.ops.Device;

/**
 * A training run's directory, as the commands around a run see it: the checkpoint to use (LATEST
 * or a given step), its resolved config, the model with its weights, and the run's tokenizer.
 */
public final class RunDir {
    public static final String TOKENIZER = "tokenizer.json";
    /** One JSON line per logged step: step, loss, lr, grad_norm, tokens_per_s, then the layers' metrics. */
    public static final String METRICS = "metrics.jsonl";

    private final String root;
    private final HadoopRunStorage storage;
    private final Checkpoints checkpoints;

    public RunDir(String root, Configuration conf) throws IOException {
        this.root = root;
        this.storage = new HadoopRunStorage(root, conf);
        this.checkpoints = new Checkpoints(storage);
    }

    /** Whether the run has logged a step (its metrics.jsonl exists). */
    public boolean hasMetrics() throws IOException {
        return storage.exists(METRICS);
    }

    /** Where the run's file {@code name} is, for messages. */
    public String describe(String name) {
        return storage.describe(name);
    }

    public Checkpoints checkpoints() {
        return checkpoints;
    }

    /** {@code step-N} for a given step, else the checkpoint LATEST names. */
    public String checkpoint(Integer step) {
        if (step != null) {
            if (!checkpoints.steps().contains(step)) {
                throw new IllegalArgumentException(root + " has no checkpoint at step " + step + "; it has " + checkpoints.steps());
            }
            return "step-" + step;
        }
        return checkpoints.latest().orElseThrow(() -> new IllegalArgumentException(root + " has no checkpoint yet"));
    }

    public RunConfig config(String checkpoint) {
        return RunConfig.fromMap(checkpoints.state(checkpoint).config(), storage.describe("checkpoints/" + checkpoint + "/state.json"));
    }

    /** The model of a checkpoint, weights loaded, on {@code dev}; the caller closes it. */
    public Gpt model(String checkpoint, Device dev) {
        RunConfig cfg = config(checkpoint);
        Gpt model = new Gpt(cfg.model(), dev, cfg.train().seed());
        try {
            checkpoints.loadWeights(checkpoint, model);
            return model;
        } catch (RuntimeException e) {
            model.close();
            throw e;
        }
    }

    public BpeTokenizer tokenizer() throws IOException {
        if (!storage.exists(TOKENIZER)) {
            throw new IllegalArgumentException(storage.describe(TOKENIZER) + " is missing: the run keeps its dataset's tokenizer there");
        }
        try (InputStream in = storage.open(TOKENIZER)) {
            return BpeTokenizer.fromJson(new String(in.readAllBytes(), StandardCharsets.UTF_8), storage.describe(TOKENIZER));
        }
    }

    /**
     * Continues {@code prompt} by up to {@code maxNewTokens} tokens and decodes the new ones (an
     * end-of-text token that stopped generation is not part of the text).
     */
    public static String continuation(Gpt model, BpeTokenizer tok, String prompt, int maxNewTokens, Sampling sampling, long seed) {
        return continuations(model, tok, List.of(prompt), maxNewTokens, sampling, seed).get(0);
    }

    /** {@link #continuation} for several prompts, decoded together as one batch; each prompt continues as it would alone. */
    public static List<String> continuations(Gpt model, BpeTokenizer tok, List<String> prompts, int maxNewTokens, Sampling sampling,
                                             long seed) {
        if (tok.vocabSize() > model.config().vocab()) {
            throw new IllegalArgumentException("the run's tokenizer has " + tok.vocabSize() + " ids but the model only "
                    + model.config().vocab());
        }
        int[][] encoded = new int[prompts.size()][];
        for (int i = 0; i < encoded.length; i++) {
            encoded[i] = tok.encode(prompts.get(i));
        }
        int[][] ids = new Generator(model).generate(encoded, maxNewTokens, sampling, seed, tok.endOfText());
        List<String> out = new java.util.ArrayList<>();
        for (int[] seq : ids) {
            int n = seq.length > 0 && seq[seq.length - 1] == tok.endOfText() ? seq.length - 1 : seq.length;
            out.add(tok.decode(java.util.Arrays.copyOf(seq, n)));
        }
        return out;
    }

    /** Checkpoints on disk, ascending. */
    public List<Integer> steps() {
        return checkpoints.steps();
    }
}
