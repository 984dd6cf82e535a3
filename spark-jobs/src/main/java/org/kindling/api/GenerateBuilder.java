package org.kindling.api;

import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import org.apache.hadoop.conf.Configuration;
import org.kindling.data.BpeTokenizer;
import org.kindling.models.Gpt;
import org.kindling.models.generate.Sampling;
import org.kindling.ops.Device;
import org.kindling.train.RunDir;

/**
 * Samples continuations of prompts from a run's checkpoint by incremental decoding: what
 * {@code kindling generate} does. Several prompts decode together as one batch, each continuing as
 * it would alone. Runs in this JVM, not on Spark.
 */
public final class GenerateBuilder {
    private final String run;
    private Configuration conf = Hadoop.sessionOrNew();
    private final List<String> prompts = new ArrayList<>();
    private Integer step;
    private int maxNewTokens = 64;
    private double temperature = 1.0;
    private int topK;
    private double topP = 1.0;
    private long seed;
    private String device = "cpu";

    GenerateBuilder(String run) {
        this.run = run;
    }

    /** Text to continue; repeat for a batch (default: one empty prompt, which starts from end-of-text). */
    public GenerateBuilder prompt(String... texts) {
        prompts.addAll(List.of(texts));
        return this;
    }

    /** The checkpoint's step (default: LATEST). */
    public GenerateBuilder step(int step) {
        this.step = step;
        return this;
    }

    /** Tokens to generate at most per prompt (default 64); an end-of-text token stops a prompt's earlier. */
    public GenerateBuilder maxNewTokens(int tokens) {
        this.maxNewTokens = tokens;
        return this;
    }

    /** Sampling temperature; 0 is greedy (default 1). */
    public GenerateBuilder temperature(double t) {
        this.temperature = t;
        return this;
    }

    /** Sample from the k most likely tokens; 0 = all (default). */
    public GenerateBuilder topK(int k) {
        this.topK = k;
        return this;
    }

    /** Nucleus sampling mass (default 1). */
    public GenerateBuilder topP(double p) {
        this.topP = p;
        return this;
    }

    /** Sampling seed (default 0): the same seed gives the same texts. */
    public GenerateBuilder seed(long seed) {
        this.seed = seed;
        return this;
    }

    /** Where to compute (default {@code cpu}). */
    public GenerateBuilder device(String spec) {
        this.device = spec;
        return this;
    }

    /** The Hadoop configuration to reach the run with (default: the Spark session's, else a new one). */
    public GenerateBuilder hadoop(Configuration conf) {
        this.conf = conf;
        return this;
    }

    /** Checks the options and returns one continuation per prompt, in order (the generated text only, without the prompt). */
    public List<String> run() throws IOException {
        if (maxNewTokens < 0) {
            throw new InvalidOptionException("maxNewTokens", "--max-new-tokens must be at least 0, got " + maxNewTokens);
        }
        Sampling sampling;
        try {
            sampling = new Sampling(temperature, topK, topP);
        } catch (IllegalArgumentException e) {
            throw InvalidOptionException.of(e, "temperature");
        }
        Devices.check(device);
        RunDir dir = new RunDir(run, conf);
        String ckpt = dir.checkpoint(step);
        BpeTokenizer tok = dir.tokenizer();
        try (Device dev = Devices.open(device); Gpt model = dir.model(ckpt, dev)) {
            return RunDir.continuations(model, tok, prompts.isEmpty() ? List.of("") : List.copyOf(prompts), maxNewTokens, sampling, seed);
        }
    }

    /** The checkpoint {@link #run()} samples from ({@code step-N}). */
    public String checkpoint() throws IOException {
        return new RunDir(run, conf).checkpoint(step);
    }
}
