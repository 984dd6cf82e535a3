package org.kindling.models.config;

import java.util.Map;
import org.kindling.models.nn.Precision;

/**
 * Training settings: the {@code train} section of a run config. Defaults follow nanoGPT/GPT-2
 * practice (AdamW 0.9/0.95, weight decay 0.1, clip 1.0, warmup then cosine to lr/10).
 *
 * @param seed seeds initialization and data order
 * @param lr peak learning rate
 * @param minLr learning rate at the end of the cosine
 * @param warmupSteps linear warmup from lr/warmupSteps to lr
 * @param maxSteps optimizer steps of the whole run
 * @param gradAccum micro-batches summed per optimizer step
 * @param batchTokens tokens per micro-batch (the data reader's budget)
 * @param gradClip global-norm clip (0 = off)
 * @param logInterval steps between progress lines
 * @param checkpointInterval steps between checkpoints (0 = only at the end)
 * @param keepCheckpoints checkpoints kept on disk, newest first
 * @param precision GEMM operand type: fp32, or bf16 with fp32 accumulation, master weights and
 *     optimizer state (see {@link Precision})
 * @param evalInterval steps between evaluations on the run's eval data, if it has any (0 = off); the last step is
 *     evaluated too
 * @param evalBatches batches each worker evaluates per evaluation (fewer where its slice of the eval data ends first)
 * @param optimizer AdamW (beta1, beta2, eps above) or M-FAC and its window, damping and momentum
 * @param recompute activation recomputation: none, or full (each block keeps only its input until its backward)
 * @param offloadOptimizerState AdamW's moments in host memory ({@code offload.optimizer_state: host})
 * @param zero 1: ZeRO stage 1, each data-parallel worker keeps and updates only its shard of AdamW's moments and
 *     the workers all-gather the updated weights; 0: every worker keeps all of them
 */
public record TrainConfig(long seed, double lr, double minLr, int warmupSteps, int maxSteps, double weightDecay,
                          double beta1, double beta2, double eps, double gradClip, int gradAccum, int batchTokens,
                          int logInterval, int checkpointInterval, int keepCheckpoints, Precision precision,
                          int evalInterval, int evalBatches, OptimizerConfig optimizer, Recompute recompute,
                          boolean offloadOptimizerState, int zero) {
    /** Batches per worker per evaluation unless eval_batches says otherwise. */
    public static final int DEFAULT_EVAL_BATCHES = 4;

    public TrainConfig {
        if (precision == null) {
            throw new IllegalArgumentException("precision must be fp32 or bf16, got none");
        }
        if (optimizer == null) {
            throw new IllegalArgumentException("optimizer must be adamw or mfac, got none");
        }
        if (recompute == null) {
            throw new IllegalArgumentException("recompute must be none or full, got none");
        }
        if (!(lr > 0) || !(minLr >= 0) || minLr > lr) {
            throw new IllegalArgumentException("need lr > 0 and 0 <= min_lr <= lr, got lr " + lr + ", min_lr " + minLr);
        }
        if (warmupSteps < 0 || maxSteps < 1 || warmupSteps > maxSteps) {
            throw new IllegalArgumentException("need max_steps >= 1 and 0 <= warmup_steps <= max_steps, got " + warmupSteps
                    + " and " + maxSteps);
        }
        if (!(weightDecay >= 0) || !(beta1 >= 0 && beta1 < 1) || !(beta2 >= 0 && beta2 < 1) || !(eps > 0)) {
            throw new IllegalArgumentException("need weight_decay >= 0, beta1 and beta2 in [0, 1), eps > 0");
        }
        if (!(gradClip >= 0)) {
            throw new IllegalArgumentException("grad_clip must be >= 0 (0 = off), got " + gradClip);
        }
        if (gradAccum < 1 || batchTokens < 1 || logInterval < 1 || checkpointInterval < 0 || keepCheckpoints < 1) {
            throw new IllegalArgumentException("need grad_accum, batch_tokens, log_interval, keep_checkpoints >= 1 and "
                    + "checkpoint_interval >= 0");
        }
        if (evalInterval < 0) {
            throw new IllegalArgumentException("eval_interval must be >= 0 (0 = off), got " + evalInterval);
        }
        if (evalBatches < 1) {
            throw new IllegalArgumentException("eval_batches must be >= 1, got " + evalBatches);
        }
        if (offloadOptimizerState && optimizer.isMfac()) {
            throw new IllegalArgumentException("offload.optimizer_state: host holds AdamW's moments; M-FAC keeps its window "
                    + "and Gram matrix on the device");
        }
        if (zero != 0 && zero != 1) {
            throw new IllegalArgumentException("zero must be 0 (off) or 1 (shard the optimizer state), got " + zero);
        }
        if (zero == 1 && optimizer.isMfac()) {
            throw new IllegalArgumentException("zero: 1 shards AdamW's moments by parameter; M-FAC's window and Gram matrix span "
                    + "every parameter and cannot be sharded: use zero: 0 with optimizer mfac");
        }
    }

    /**
     * fp32 training that evaluates every log_interval steps (when there is eval data), {@link #DEFAULT_EVAL_BATCHES}
     * batches per worker: the settings before precision and evaluation became selectable.
     */
    public TrainConfig(long seed, double lr, double minLr, int warmupSteps, int maxSteps, double weightDecay, double beta1,
                       double beta2, double eps, double gradClip, int gradAccum, int batchTokens, int logInterval,
                       int checkpointInterval, int keepCheckpoints) {
        this(seed, lr, minLr, warmupSteps, maxSteps, weightDecay, beta1, beta2, eps, gradClip, gradAccum, batchTokens, logInterval,
                checkpointInterval, keepCheckpoints, Precision.FP32, logInterval, DEFAULT_EVAL_BATCHES);
    }

    /** No recomputation, offload or ZeRO: the settings before they became selectable. */
    public TrainConfig(long seed, double lr, double minLr, int warmupSteps, int maxSteps, double weightDecay, double beta1,
                       double beta2, double eps, double gradClip, int gradAccum, int batchTokens, int logInterval,
                       int checkpointInterval, int keepCheckpoints, Precision precision, int evalInterval, int evalBatches,
                       OptimizerConfig optimizer) {
        this(seed, lr, minLr, warmupSteps, maxSteps, weightDecay, beta1, beta2, eps, gradClip, gradAccum, batchTokens, logInterval,
                checkpointInterval, keepCheckpoints, precision, evalInterval, evalBatches, optimizer, Recompute.NONE, false, 0);
    }

    /** AdamW: the settings before the optimizer became selectable. */
    public TrainConfig(long seed, double lr, double minLr, int warmupSteps, int maxSteps, double weightDecay, double beta1,
                       double beta2, double eps, double gradClip, int gradAccum, int batchTokens, int logInterval,
                       int checkpointInterval, int keepCheckpoints, Precision precision, int evalInterval, int evalBatches) {
        this(seed, lr, minLr, warmupSteps, maxSteps, weightDecay, beta1, beta2, eps, gradClip, gradAccum, batchTokens, logInterval,
                checkpointInterval, keepCheckpoints, precision, evalInterval, evalBatches, OptimizerConfig.ADAMW_DEFAULT);
    }

    /** The same settings with eval_interval and eval_batches replaced. */
    public TrainConfig withEval(int interval, int batches) {
        return new TrainConfig(seed, lr, minLr, warmupSteps, maxSteps, weightDecay, beta1, beta2, eps, gradClip, gradAccum,
                batchTokens, logInterval, checkpointInterval, keepCheckpoints, precision, interval, batches, optimizer, recompute,
                offloadOptimizerState, zero);
    }

    /** The same settings with {@code optimizer} instead. */
    public TrainConfig withOptimizer(OptimizerConfig optimizer) {
        return new TrainConfig(seed, lr, minLr, warmupSteps, maxSteps, weightDecay, beta1, beta2, eps, gradClip, gradAccum,
                batchTokens, logInterval, checkpointInterval, keepCheckpoints, precision, evalInterval, evalBatches, optimizer, recompute,
                offloadOptimizerState, zero);
    }

    /** The same settings with AdamW's moments in host memory ({@code offload.optimizer_state: host}) or on the device. */
    public TrainConfig withOffload(boolean optimizerState) {
        return new TrainConfig(seed, lr, minLr, warmupSteps, maxSteps, weightDecay, beta1, beta2, eps, gradClip, gradAccum,
                batchTokens, logInterval, checkpointInterval, keepCheckpoints, precision, evalInterval, evalBatches, optimizer, recompute,
                optimizerState, zero);
    }

    /** The same settings with ZeRO stage {@code zero} (0 or 1). */
    public TrainConfig withZero(int zero) {
        return new TrainConfig(seed, lr, minLr, warmupSteps, maxSteps, weightDecay, beta1, beta2, eps, gradClip, gradAccum,
                batchTokens, logInterval, checkpointInterval, keepCheckpoints, precision, evalInterval, evalBatches, optimizer, recompute,
                offloadOptimizerState, zero);
    }

    /** The same settings with {@code recompute} instead. */
    public TrainConfig withRecompute(Recompute recompute) {
        return new TrainConfig(seed, lr, minLr, warmupSteps, maxSteps, weightDecay, beta1, beta2, eps, gradClip, gradAccum,
                batchTokens, logInterval, checkpointInterval, keepCheckpoints, precision, evalInterval, evalBatches, optimizer, recompute,
                offloadOptimizerState, zero);
    }

    /** Whether step {@code step} (1-based) is evaluated when there is eval data: every eval_interval steps and the last. */
    public boolean evaluatesAt(int step) {
        return evalInterval > 0 && (step % evalInterval == 0 || step == maxSteps);
    }

    /** Defaults for everything but the step budget. */
    public static TrainConfig defaults(int maxSteps) {
        return new TrainConfig(1337, 6e-4, 6e-5, Math.min(100, maxSteps / 10), maxSteps, 0.1, 0.9, 0.95, 1e-8, 1.0, 1,
                8192, 10, 0, 3);
    }

    /** These settings with {@code precision} instead. */
    public TrainConfig withPrecision(Precision precision) {
        return new TrainConfig(seed, lr, minLr, warmupSteps, maxSteps, weightDecay, beta1, beta2, eps, gradClip, gradAccum,
                batchTokens, logInterval, checkpointInterval, keepCheckpoints, precision, evalInterval, evalBatches, optimizer, recompute,
                offloadOptimizerState, zero);
    }

    /** Learning rate of optimizer step {@code step} (0-based): linear warmup, then cosine decay to minLr. */
    public double lrAt(int step) {
        if (step < warmupSteps) {
            return lr * (step + 1) / warmupSteps;
        }
        if (maxSteps <= warmupSteps) {
            return lr;
        }
        double progress = Math.min(1.0, (double) (step - warmupSteps) / (maxSteps - warmupSteps));
        return minLr + 0.5 * (1 + Math.cos(Math.PI * progress)) * (lr - minLr);
    }

    static TrainConfig read(ConfigReader r) {
        TrainConfig d = defaults(r.has("max_steps") ? r.integer("max_steps", null) : 1000);
        double lr = r.number("lr", d.lr());
        long seed = r.integer("seed", (int) d.seed());
        double minLr = r.number("min_lr", lr / 10);
        int maxSteps = r.integer("max_steps", d.maxSteps());
        int warmup = r.integer("warmup_steps", d.warmupSteps());
        double wd = r.number("weight_decay", d.weightDecay());
        double b1 = r.number("beta1", d.beta1());
        double b2 = r.number("beta2", d.beta2());
        double eps = r.number("eps", d.eps());
        double clip = r.number("grad_clip", d.gradClip());
        int accum = r.integer("grad_accum", d.gradAccum());
        int batchTokens = r.integer("batch_tokens", d.batchTokens());
        int logInterval = r.integer("log_interval", d.logInterval());
        int ckpt = r.integer("checkpoint_interval", d.checkpointInterval());
        int keep = r.integer("keep_checkpoints", d.keepCheckpoints());
        String precisionKey = r.string("precision", d.precision().key());
        Precision precision;
        try {
            precision = Precision.parse(precisionKey);
        } catch (IllegalArgumentException e) {
            throw r.error("precision", "must be fp32 or bf16, got '" + precisionKey + "'");
        }
        int evalInterval = r.integer("eval_interval", logInterval);
        int evalBatches = r.integer("eval_batches", DEFAULT_EVAL_BATCHES);
        if (evalInterval < 0) {
            throw r.error("eval_interval", "must be >= 0 (0 = off), got " + evalInterval);
        }
        if (evalBatches < 1) {
            throw r.error("eval_batches", "must be >= 1, got " + evalBatches);
        }
        OptimizerConfig optimizer = OptimizerConfig.read(r);
        String recomputeKey = r.string("recompute", Recompute.NONE.key());
        Recompute recompute;
        try {
            recompute = Recompute.parse(recomputeKey);
        } catch (IllegalArgumentException e) {
            throw r.error("recompute", e.getMessage());
        }
        boolean offload = readOffload(r);
        int zero = r.integer("zero", 0);
        if (zero != 0 && zero != 1) {
            throw r.error("zero", "must be 0 (off) or 1 (shard the optimizer state), got " + zero);
        }
        try {
            return new TrainConfig(seed, lr, minLr, warmup, maxSteps, wd, b1, b2, eps, clip, accum, batchTokens, logInterval,
                    ckpt, keep, precision, evalInterval, evalBatches, optimizer, recompute, offload, zero);
        } catch (IllegalArgumentException e) {
            throw r.invalid(e);
        }
    }

    /** {@code offload: {optimizer_state: device | host}}: whether AdamW's moments live in host memory. */
    private static boolean readOffload(ConfigReader train) {
        ConfigReader r = train.child("offload");
        if (r == null) {
            return false;
        }
        String where = r.string("optimizer_state", "device");
        r.finish();
        return switch (where) {
            case "device" -> false;
            case "host" -> true;
            default -> throw r.error("optimizer_state", "must be device or host, got '" + where + "'");
        };
    }

    public Map<String, Object> toMap() {
        Map<String, Object> m = ConfigReader.ordered();
        m.put("seed", seed);
        m.put("lr", lr);
        m.put("min_lr", minLr);
        m.put("warmup_steps", warmupSteps);
        m.put("max_steps", maxSteps);
        m.put("weight_decay", weightDecay);
        m.put("beta1", beta1);
        m.put("beta2", beta2);
        m.put("eps", eps);
        m.put("grad_clip", gradClip);
        m.put("grad_accum", gradAccum);
        m.put("batch_tokens", batchTokens);
        m.put("log_interval", logInterval);
        m.put("checkpoint_interval", checkpointInterval);
        m.put("keep_checkpoints", keepCheckpoints);
        m.put("precision", precision.key());
        m.put("eval_interval", evalInterval);
        m.put("eval_batches", evalBatches);
        m.put("optimizer", optimizer.toValue());
        m.put("recompute", recompute.key());
        m.put("offload", Map.of("optimizer_state", offloadOptimizerState ? "host" : "device"));
        m.put("zero", zero);
        return m;
    }
}
