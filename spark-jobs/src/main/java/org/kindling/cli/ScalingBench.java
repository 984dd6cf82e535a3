package org.kindling.cli;

import java.io.PrintWriter;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.Callable;
import org.kindling.api.Presets;
import org.kindling.models.GptStage;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.RunConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.pipeline.PipelinePolicy;
import org.kindling.models.train.DataParallel;
import org.kindling.models.train.InProcessPipeline;
import org.kindling.models.train.StageTrainer;
import org.kindling.models.train.StepResult;
import org.kindling.ops.Device;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

@Command(name = "scaling", mixinStandardHelpOptions = true,
        description = {"The survey of distributed training's three measures for each parallel mode and worker count, in one run:",
            "throughput (tokens/s of the median step, and its speedup over the same mode on 1 worker), statistical efficiency (the",
            "loss after the same token budget, beside 1 worker's) and memory per worker (optimizer state, and the activations one",
            "step adds to its device's peak). Modes: dp (data parallelism, every worker a whole model), zero1 (dp with AdamW's",
            "moments sharded across the workers) and pipeline (the model cut into one stage per worker, --policy's schedule).",
            "Workers are in-process replicas or stages, each on --threads/W CPU threads; every row trains the same model from",
            "the same initial weights on the same global batches (--batch sequences of --seq tokens per step, in",
            "--micro-batches micro-batches) of a learnable synthetic stream: each token follows from the one before it, with noise."})
final class ScalingBench implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--modes", split = ",", description = "parallel modes, one row each per worker count: dp, zero1, pipeline "
            + "(default ${DEFAULT-VALUE})", defaultValue = "dp,zero1,pipeline")
    List<String> modes;

    @Option(names = "--workers", split = ",", description = "worker counts W, one row each per mode (default ${DEFAULT-VALUE})",
            defaultValue = "1,2")
    List<Integer> workers;

    @Option(names = "--preset", description = "model preset name (conf/models/NAME.yaml) or a config file (default ${DEFAULT-VALUE})",
            defaultValue = "small")
    String preset;

    @Option(names = "--set", description = "override a key of the --preset config, e.g. --set n_layer=4")
    Map<String, String> overrides = new LinkedHashMap<>();

    @Option(names = "--seq", description = "tokens per sequence (default ${DEFAULT-VALUE})", defaultValue = "256")
    int seq;

    @Option(names = "--batch", description = "sequences per optimizer step, all workers together (default ${DEFAULT-VALUE})",
            defaultValue = "8")
    int batch;

    @Option(names = "--micro-batches", description = "micro-batches per step (the pipeline's M; gradient accumulation "
            + "elsewhere) (default ${DEFAULT-VALUE})", defaultValue = "4")
    int microBatches;

    @Option(names = "--steps", description = "timed steps, after --warmup untimed ones; every step trains, so the token budget is "
            + "(warmup + steps) × batch × seq (default ${DEFAULT-VALUE})", defaultValue = "8")
    int steps;

    @Option(names = "--warmup", description = "untimed steps first, while the JIT compiles (default ${DEFAULT-VALUE})",
            defaultValue = "2")
    int warmup;

    @Option(names = "--lr", description = "peak learning rate, cosine to a tenth over the steps (default ${DEFAULT-VALUE})",
            defaultValue = "1e-3")
    double lr;

    @Option(names = "--policy", description = "the pipeline mode's schedule: 1f1b, 1f1b-recompute, stage-aware, shifted "
            + "(default ${DEFAULT-VALUE})", defaultValue = "1f1b")
    String policy;

    @Option(names = "--timeout", description = "seconds a pipeline stage waits for a message at most (default ${DEFAULT-VALUE})",
            defaultValue = "300")
    int timeoutSeconds;

    @CommandLine.Mixin
    BenchOptions common;

    /** What one mode on one worker count measured. */
    private record Row(String mode, int workers, double stepSeconds, double loss, long optimizerBytes, long activationBytes) {
    }

    @Override
    public Integer call() throws Exception {
        CommandLine cmd = spec.commandLine();
        BenchOptions.requirePositive(cmd, "--seq", seq, "--batch", batch, "--micro-batches", microBatches, "--steps", steps,
                "--timeout", timeoutSeconds);
        if (warmup < 0) {
            throw new CommandLine.ParameterException(cmd, "--warmup must be at least 0, got " + warmup);
        }
        if (!(lr > 0) || Double.isInfinite(lr)) {
            throw new CommandLine.ParameterException(cmd, "--lr must be a finite number > 0, got " + lr);
        }
        for (String m : modes) {
            if (!List.of("dp", "zero1", "pipeline").contains(m)) {
                throw new CommandLine.ParameterException(cmd, "--modes takes dp, zero1 and pipeline, got '" + m + "'");
            }
        }
        PipelinePolicy schedule;
        try {
            schedule = PipelinePolicy.parse(policy);
        } catch (IllegalArgumentException e) {
            throw new CommandLine.ParameterException(cmd, "--policy: " + e.getMessage());
        }
        if (batch % microBatches != 0) {
            throw new CommandLine.ParameterException(cmd, "--micro-batches " + microBatches + " must divide --batch " + batch);
        }
        int threads = common.threads(cmd);
        ModelConfig model;
        try {
            model = RunConfig.load(Presets.resolve(preset), overrides).model();
        } catch (IllegalArgumentException e) {
            throw new CommandLine.ParameterException(cmd, e.getMessage());
        }
        if (model.limited() && seq > model.maxSeq()) {
            throw new CommandLine.ParameterException(cmd, "--seq " + seq + " exceeds the model's max_seq " + model.maxSeq());
        }
        // 1 first, so every row can be set beside its mode's single worker.
        workers = workers.stream().distinct().sorted().toList();
        for (int w : workers) {
            if (w < 1 || w > threads) {
                throw new CommandLine.ParameterException(cmd, "--workers " + w + " must be in [1, --threads " + threads + "]: "
                        + "each worker needs a thread of its own");
            }
            if (modes.contains("pipeline") && w > model.nLayer()) {
                throw new CommandLine.ParameterException(cmd, "--workers " + w + ": the pipeline mode needs a block per stage, and "
                        + "the model has " + model.nLayer());
            }
            if (modes.contains("pipeline")) {
                try {
                    GptStage.split(model, w);
                } catch (IllegalArgumentException e) {
                    throw new CommandLine.ParameterException(cmd, "--modes pipeline with --preset " + preset + ": " + e.getMessage());
                }
            }
            if ((modes.contains("dp") || modes.contains("zero1")) && (batch / microBatches) % w != 0) {
                throw new CommandLine.ParameterException(cmd, "--workers " + w + " must divide the " + batch / microBatches
                        + " sequences of a micro-batch, so each data-parallel worker trains on whole sequences");
            }
        }
        TrainConfig train = new TrainConfig(1, lr, lr / 10, 0, warmup + steps, 0.1, 0.9, 0.95, 1e-8, 1.0, microBatches,
                batch / microBatches * seq, 1, 0, 1);
        String refusal = StageTrainer.refusal(train);
        if (refusal != null) {
            throw new CommandLine.ParameterException(cmd, refusal);
        }
        PrintWriter err = cmd.getErr();
        err.printf("scaling: %s (%d layers, C=%d), %d × %d tokens per step in %d micro-batches, %d steps (%d timed), %d thread(s)%n",
                preset, model.nLayer(), model.dModel(), batch, seq, microBatches, warmup + steps, steps, threads);
        Map<String, Row> single = new LinkedHashMap<>();
        List<Row> rows = new ArrayList<>();
        for (String mode : modes) {
            for (int w : workers) {
                Row r = mode.equals("pipeline") ? pipeline(model, train, schedule, w, threads) : dataParallel(mode, model, train, w,
                        threads);
                rows.add(r);
                if (w == 1) {
                    single.put(mode, r);
                }
                Row one = single.get(mode);
                double tokens = (double) batch * seq;
                err.printf("%-8s W=%d: %,.0f tokens/s%s, loss %.4f%s after %,d tokens, per worker: optimizer %s, activations %s%n",
                        mode, w, tokens / r.stepSeconds(), one == null || w == 1 ? ""
                                : String.format(" (%.2fx 1 worker)", one.stepSeconds() / r.stepSeconds()), r.loss(),
                        one == null || w == 1 ? "" : String.format(" (1 worker: %.4f)", one.loss()),
                        (long) tokens * (warmup + steps), BenchOptions.mib(r.optimizerBytes()), BenchOptions.mib(r.activationBytes()));
                err.flush();
                if (common.json) {
                    Map<String, Object> row = new LinkedHashMap<>();
                    row.put("bench", "scaling");
                    row.put("mode", mode);
                    row.put("workers", w);
                    row.put("tokens_per_s", BenchOptions.round(tokens / r.stepSeconds()));
                    row.put("speedup", one == null ? null : BenchOptions.round(one.stepSeconds() / r.stepSeconds()));
                    row.put("loss", r.loss());
                    row.put("loss_1_worker", one == null ? null : one.loss());
                    row.put("tokens", (long) tokens * (warmup + steps));
                    row.put("optimizer_bytes", r.optimizerBytes());
                    row.put("activation_bytes", r.activationBytes());
                    Json.printLine(cmd.getOut(), row);
                }
            }
        }
        return 0;
    }

    /** Micro-batch {@code p} of the stream: its sequences walk the vocabulary by a fixed stride, one token in 8 replaced by noise. */
    private TokenBatch microBatch(long p, int vocab) {
        int sequences = batch / microBatches;
        SplittableRandom r = new SplittableRandom(0x5CA1AB1EL + p);
        int[] tokens = new int[sequences * seq];
        int[] cu = new int[sequences + 1];
        for (int s = 0; s < sequences; s++) {
            int t = r.nextInt(vocab);
            for (int i = 0; i < seq; i++) {
                tokens[s * seq + i] = r.nextInt(8) == 0 ? r.nextInt(vocab) : t;
                t = (t * 5 + 3) % vocab;
            }
            cu[s + 1] = (s + 1) * seq;
        }
        return new TokenBatch(tokens, cu);
    }

    /** dp or zero1 on {@code w} in-process replicas, each on its share of every micro-batch's sequences. */
    private Row dataParallel(String mode, ModelConfig model, TrainConfig train, int w, int threads) throws Exception {
        TrainConfig cfg = mode.equals("zero1") ? train.withZero(1) : train;
        try (DataParallel dp = common.replicas(w, threads / w, model, train.seed(), cfg)) {
            long[] base = new long[w];
            long optimizer = 0;
            for (int r = 0; r < w; r++) {
                Device dev = dp.replicas().get(r).device();
                base[r] = dev.liveBytes();
                dev.resetPeak();
                optimizer = Math.max(optimizer, dp.replicas().get(r).trainer().optimizer().memoryBytes());
            }
            long[] next = {0};
            StepResult[] last = new StepResult[1];
            Timing.Trial step = () -> {
                TokenBatch[][] pieces = new TokenBatch[w][microBatches];
                for (int m = 0; m < microBatches; m++) {
                    TokenBatch[] split = microBatch(next[0]++, model.vocab()).split(w);
                    for (int r = 0; r < w; r++) {
                        pieces[r][m] = split[r];
                    }
                }
                List<DataSource> sources = new ArrayList<>();
                for (TokenBatch[] own : pieces) {
                    sources.add(DataSource.indexed(p -> own[(int) p]));
                }
                last[0] = dp.step(sources);
            };
            Timing.Stats stats = Timing.measure(new Timing.Rule(warmup, steps, 0), step);
            long activations = 0;
            for (int r = 0; r < w; r++) {
                activations = Math.max(activations, dp.replicas().get(r).device().peakBytes() - base[r]);
            }
            return new Row(mode, w, stats.median(), last[0].loss(), optimizer, activations);
        }
    }

    /** The model cut into {@code w} stages, one per worker, over in-memory channels. */
    private Row pipeline(ModelConfig model, TrainConfig train, PipelinePolicy schedule, int w, int threads) throws Exception {
        List<Device> devices = new ArrayList<>();
        try {
            for (int s = 0; s < w; s++) {
                devices.add(common.open(threads / w));
            }
            try (InProcessPipeline pipe = new InProcessPipeline(model, train, schedule, devices, Duration.ofSeconds(timeoutSeconds))) {
                long[] base = new long[w];
                long optimizer = 0;
                for (int s = 0; s < w; s++) {
                    base[s] = devices.get(s).liveBytes();
                    devices.get(s).resetPeak();
                    optimizer = Math.max(optimizer, pipe.trainers().get(s).optimizer().memoryBytes());
                }
                long[] next = {0};
                StepResult[] last = new StepResult[1];
                Timing.Trial step = () -> {
                    List<TokenBatch> batches = new ArrayList<>();
                    for (int m = 0; m < microBatches; m++) {
                        batches.add(microBatch(next[0]++, model.vocab()));
                    }
                    last[0] = pipe.step(batches);
                };
                Timing.Stats stats = Timing.measure(new Timing.Rule(warmup, steps, 0), step);
                long activations = 0;
                for (int s = 0; s < w; s++) {
                    activations = Math.max(activations, devices.get(s).peakBytes() - base[s]);
                }
                return new Row("pipeline", w, stats.median(), last[0].loss(), optimizer, activations);
            }
        } finally {
            devices.forEach(Device::close);
        }
    }
}
