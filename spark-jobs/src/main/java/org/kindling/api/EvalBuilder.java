package org.kindling.api;

import java.io.IOException;
import org.apache.hadoop.conf.Configuration;
import org.kindling.models.Gpt;
import org.kindling.ops.Device;
import org.kindling.train.EvalPass;
import org.kindling.train.RunDir;

/**
 * Mean next-token loss and perplexity of a run's checkpoint over one pass of a prepared dataset (or
 * its first {@link #batches} batches): what {@code kindling eval} does. Runs in this JVM, not on Spark.
 */
public final class EvalBuilder {
    private final String run;
    private Configuration conf = Hadoop.sessionOrNew();
    private String data;
    private Integer step;
    private int batchTokens = 8192;
    private Integer batches;
    private String device = "cpu";

    EvalBuilder(String run) {
        this.run = run;
    }

    /** The dataset to evaluate on; it must use the run's tokenizer (required). */
    public EvalBuilder data(PreparedData data) {
        this.data = data.path();
        return this;
    }

    /** The dataset's directory (any Hadoop path). */
    public EvalBuilder data(String path) {
        this.data = path;
        return this;
    }

    /** The checkpoint's step (default: LATEST). */
    public EvalBuilder step(int step) {
        this.step = step;
        return this;
    }

    /** Tokens per batch (default 8192). */
    public EvalBuilder batchTokens(int tokens) {
        this.batchTokens = tokens;
        return this;
    }

    /** Stop after this many batches (default: the whole dataset). */
    public EvalBuilder batches(int batches) {
        this.batches = batches;
        return this;
    }

    /** Where to compute (default {@code cpu}). */
    public EvalBuilder device(String spec) {
        this.device = spec;
        return this;
    }

    /** The Hadoop configuration to reach the run and dataset with (default: the Spark session's, else a new one). */
    public EvalBuilder hadoop(Configuration conf) {
        this.conf = conf;
        return this;
    }

    /** Checks the options and evaluates. */
    public EvalResult run() throws IOException {
        if (data == null || data.isBlank()) {
            throw new InvalidOptionException("data", "is required");
        }
        if (batches != null && batches < 1) {
            throw new InvalidOptionException("batches", "--batches must be at least 1, got " + batches);
        }
        if (batchTokens < 1) {
            throw new InvalidOptionException("batchTokens", "--batch-tokens must be at least 1, got " + batchTokens);
        }
        Devices.check(device);
        RunDir dir = new RunDir(run, conf);
        String ckpt = dir.checkpoint(step);
        String runTokenizer = dir.tokenizer().sha256();
        EvalPass.Sums sums;
        try (Device dev = Devices.open(device); Gpt model = dir.model(ckpt, dev);
             EvalPass pass = new EvalPass(data, conf, 0, 1, batchTokens, batches == null ? Integer.MAX_VALUE : batches)) {
            pass.checkTokenizer(runTokenizer, data, run + "/" + RunDir.TOKENIZER);
            sums = pass.run(model);
        }
        double mean = sums.mean();
        return new EvalResult(mean, Math.exp(mean), sums.predicted(), sums.batches(), ckpt);
    }
}
