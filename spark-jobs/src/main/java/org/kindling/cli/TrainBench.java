package org.kindling.cli;

import java.io.IOException;
import java.io.PrintWriter;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.Callable;
import org.apache.hadoop.conf.Configuration;
import org.kindling.api.Presets;
import org.kindling.data.DatasetReader;
import org.kindling.data.Shard;
import org.kindling.models.config.DeqConfig;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.RunConfig;
import org.kindling.models.config.OptimizerConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.deq.FixedPointSolver;
import org.kindling.models.io.HfExport;
import org.kindling.models.nn.Precision;
import org.kindling.models.train.DataParallel;
import org.kindling.models.train.StepResult;
import org.kindling.models.train.Trainer;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Gemm;
import org.kindling.ops.Profiler;
import org.kindling.train.DatasetSource;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

@Command(name = "train", mixinStandardHelpOptions = true,
        description = {"Training throughput of a GPT model on random tokens: tokens/s and ms per optimizer step (median step),",
            "split into forward, backward and optimizer (of replica 0, mean of the timed steps). The model is a preset, or built",
            "from --layers/--d-model/--heads/--vocab. --peer torch trains the same model in PyTorch (peers/torch_train.py) on",
            "the same threads in the same run and prints the ratio."})
final class TrainBench implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--preset", description = "model preset name (conf/models/NAME.yaml) or a config file")
    String preset;

    @Option(names = "--set", description = {"override a key of the --preset config as `kindling train --set` does, e.g.",
        "--set channel_mixer=moe --set channel_mixer.experts=4"})
    Map<String, String> overrides = new LinkedHashMap<>();

    @Option(names = "--layers", description = "blocks (default ${DEFAULT-VALUE})", defaultValue = "4")
    int layers;

    @Option(names = "--d-model", description = "channels (default ${DEFAULT-VALUE})", defaultValue = "256")
    int dModel;

    @Option(names = "--heads", description = "attention heads (default ${DEFAULT-VALUE})", defaultValue = "4")
    int heads;

    @Option(names = "--vocab", description = "vocabulary size (default ${DEFAULT-VALUE})", defaultValue = "256")
    int vocab;

    @Option(names = "--seq", description = "tokens per sequence T (default ${DEFAULT-VALUE})", defaultValue = "256")
    int seq;

    @Option(names = "--batch", description = "sequences per step B (default ${DEFAULT-VALUE})", defaultValue = "8")
    int batch;

    @Option(names = "--steps", description = "timed steps, after --warmup untimed ones (default ${DEFAULT-VALUE})",
            defaultValue = "20")
    int steps;

    @Option(names = "--warmup", description = "untimed steps first, while the JIT compiles (default ${DEFAULT-VALUE})",
            defaultValue = "10")
    int warmup;

    @Option(names = "--replicas", description = {"model replicas training data-parallel in this JVM, each on --threads/R",
        "threads and B/R sequences, summing gradients in shared memory (default: one per thread when B divides evenly)"})
    Integer replicas;

    @Option(names = "--dtype", description = {"precision: fp32, or bf16 (bf16 GEMM operands, fp32 accumulation, master",
        "weights and optimizer state; the run config's precision: bf16) (default ${DEFAULT-VALUE})"}, defaultValue = "fp32")
    String dtype;

    @Option(names = "--optimizer", split = ",", description = {"the update, or several compared in this run from the same",
        "initial model on the same batches, the first as the baseline: adamw, mfac (M-FAC over a window of --ngrads gradients,",
        "the config's default damping and no momentum) (default ${DEFAULT-VALUE})"}, defaultValue = "adamw")
    List<String> optimizers;

    @Option(names = "--zero", description = {"ZeRO stage of the replicas (the run config's zero): 1 shards AdamW's moments among",
        "them (adamw only) (default ${DEFAULT-VALUE})"}, defaultValue = "0")
    int zero;

    @Option(names = "--ngrads", description = "M-FAC's window with --optimizer mfac (default ${DEFAULT-VALUE})", defaultValue = "16")
    int ngrads;

    @Option(names = "--lr", description = {"peak learning rate, decayed by a cosine to a tenth over the steps, no warm-up",
        "(default ${DEFAULT-VALUE})"}, defaultValue = "1e-4")
    double lr;

    @Option(names = "--data", description = {"a prepared dataset (kindling prepare) to train on instead of random tokens, so",
        "that the losses of the compared optimizers mean something; the vocabulary follows it unless given"})
    String data;

    @Option(names = "--profile", description = {"count every kernel of the timed steps by class (gemm, attention, normalization,",
        "elementwise, loss, optimizer, embedding, other) and the gradient sync (communication): a table per step on stderr",
        "of calls, GFLOP, MB, ms, shares of FLOPs and time, GFLOP/s and GB/s; with --json one line per class"})
    boolean profile;

    @Option(names = "--ceiling", description = {"first time an N x N x N GEMM of the backend on all the threads in this run (and",
        "PyTorch's with --peer torch): the machine's GEMM ceiling; then print the step's GFLOP/s (the FLOPs the profiler",
        "counts in one step over the median step time) as a share of the faster; 0 skips it (default ${DEFAULT-VALUE}; on the",
        "reference device only when given)"},
            defaultValue = "1024")
    int ceiling;

    @Option(names = "--peer", description = "also train the same model in PyTorch in this run: torch")
    String peer;

    @Option(names = "--python", description = "the Python for --peer (default: $KINDLING_PYTHON, else python3)")
    String python;

    @Option(names = "--deq", description = {"compare a deep equilibrium model (one block solved to its fixed point, the deq key's",
        "defaults: anderson, history 6, max_iter 30, tol 1e-3) with the explicit --layers model of the same width, one replica",
        "each, in the same run: activation bytes of one training pass, median step time and the loss after the same tokens"})
    boolean deq;

    @CommandLine.Mixin
    BenchOptions common;

    @Override
    public Integer call() throws Exception {
        CommandLine cmd = spec.commandLine();
        BenchOptions.requirePositive(cmd, "--layers", layers, "--d-model", dModel, "--heads", heads, "--vocab", vocab, "--seq", seq,
                "--batch", batch, "--steps", steps);
        if (!(lr > 0) || Double.isInfinite(lr)) {
            throw new CommandLine.ParameterException(cmd, "--lr must be a finite number > 0, got " + lr);
        }
        if (warmup < 0) {
            throw new CommandLine.ParameterException(cmd, "--warmup must be 0 or more, got " + warmup);
        }
        if (ceiling < 0) {
            throw new CommandLine.ParameterException(cmd, "--ceiling must be 0 (skip) or a GEMM size, got " + ceiling);
        }
        // The fp64 reference device has no ceiling worth timing by default (a 1024³ GEMM in plain loops).
        int ceilingSize = Device.name(common.deviceSpec(cmd)).equals("reference") && !cmd.getParseResult().hasMatchedOption("--ceiling")
                ? 0 : ceiling;
        Precision precision;
        try {
            precision = Precision.parse(dtype);
        } catch (IllegalArgumentException e) {
            throw new CommandLine.ParameterException(cmd, "--dtype must be fp32 or bf16, got " + dtype);
        }
        if (precision == Precision.BF16 && Device.name(common.deviceSpec(cmd)).equals("reference")) {
            throw new CommandLine.ParameterException(cmd, "--dtype bf16 is not modelled on the reference device, which "
                    + "computes in double");
        }
        Peer torch = Peer.parse(cmd, peer, python);
        int threads = common.threads(cmd);
        if (deq) {
            for (String o : List.of("--preset", "--set", "--peer", "--profile", "--replicas", "--optimizer", "--ngrads", "--zero")) {
                if (cmd.getParseResult().hasMatchedOption(o)) {
                    throw new CommandLine.ParameterException(cmd, "--deq builds both models from --layers/--d-model/--heads/--vocab "
                            + "and trains them with AdamW on one replica; it does not take " + o);
                }
            }
            return compareDeq(cmd, precision, threads);
        }
        int reps = BenchOptions.replicas(cmd, replicas, batch, threads);
        if (preset == null && !overrides.isEmpty()) {
            throw new CommandLine.ParameterException(cmd, "--set overrides keys of a config: give it with --preset");
        }
        List<OptimizerConfig> opts = optimizers(cmd, torch);
        if (profile && opts.size() > 1) {
            throw new CommandLine.ParameterException(cmd, "--profile counts the kernels of one optimizer's steps: give one "
                    + "--optimizer");
        }
        Shard.Info dataset = data == null ? null : datasetInfo(cmd);
        ModelConfig cfg;
        try {
            cfg = preset != null ? RunConfig.load(Presets.resolve(preset), overrides).model()
                    : ModelConfig.gpt(vocabFor(cmd, dataset), dModel, layers, heads, heads, seq, 4, 0, 0.02, 1e-5);
        } catch (IllegalArgumentException e) {
            throw new CommandLine.ParameterException(cmd, e.getMessage());
        }
        if (cfg.limited() && seq > cfg.maxSeq()) {
            throw new CommandLine.ParameterException(cmd, "--seq " + seq + " exceeds the model's max_seq " + cfg.maxSeq());
        }
        if (dataset != null) {
            requireFits(cmd, cfg, dataset, reps);
        }
        TrainConfig train;
        try {
            train = new TrainConfig(1, lr, lr / 10, 0, warmup + steps, 0.1, 0.9, 0.95, 1e-8, 1.0, 1, batch * seq, 1, 0, 1)
                    .withPrecision(precision).withZero(zero);
            for (OptimizerConfig opt : opts) {
                train.withOptimizer(opt); // every compared optimizer must allow the ZeRO stage (M-FAC refuses zero 1)
            }
        } catch (IllegalArgumentException e) {
            throw new CommandLine.ParameterException(cmd, "--zero: " + e.getMessage());
        }
        if (torch != null) {
            try {
                HfExport.requireGpt2(cfg);
            } catch (IllegalArgumentException e) {
                throw new CommandLine.ParameterException(cmd, "--peer torch trains only GPT-2-shaped models: " + e.getMessage());
            }
            if (cfg.dropout() != 0) {
                throw new CommandLine.ParameterException(cmd, "--peer torch trains only models without dropout; this one has "
                        + cfg.dropout());
            }
        }
        PrintWriter err = cmd.getErr();
        List<Map<String, Object>> ceilings = ceilingSize > 0 ? ceilings(cmd, torch, threads, precision) : List.of();
        int perThreads = threads / reps;
        double stepFlops = 0;
        if (ceilingSize > 0 && !profile) {
            Profiler counter = new Profiler();
            try (DataParallel dp = common.replicas(reps, perThreads, cfg, 1, train.withOptimizer(opts.get(0)), counter);
                 Feeds feeds = feeds(cfg, reps)) {
                dp.step(feeds.sources());
            }
            stepFlops = flops(counter);
        }
        Profiler profiler = profile ? new Profiler() : null;
        List<Side> sides = new ArrayList<>();
        for (OptimizerConfig opt : opts) {
            Side side = train(cfg, train.withOptimizer(opt), reps, perThreads, profiler, err);
            sides.add(side);
            if (common.json) {
                Map<String, Object> row = new LinkedHashMap<>();
                row.put("bench", "train");
                row.put("params", side.params());
                row.put("seq", seq);
                row.put("batch", batch);
                row.put("tokens_per_s", BenchOptions.round(side.stats().medianRate(batch * seq)));
                row.put("ms_per_step", BenchOptions.round(side.stats().median() * 1e3));
                row.put("fwd_ms", BenchOptions.round(side.fwdMs()));
                row.put("bwd_ms", BenchOptions.round(side.bwdMs()));
                row.put("opt_ms", BenchOptions.round(side.optMs()));
                row.put("impl", side.impl());
                row.put("active_params", side.activeParams());
                row.put("peak_mb", BenchOptions.round(side.peakBytes() / 1e6));
                Json.putMetrics(row, side.last().metrics());
                Json.printLine(cmd.getOut(), row);
            }
        }
        if (opts.size() > 1) {
            printSteps(cmd, sides);
        }
        if (common.json) {
            for (Map<String, Object> c : ceilings) {
                Json.printLine(cmd.getOut(), c);
            }
        }
        Side first = sides.get(0);
        if (profiler != null) {
            stepFlops = flops(profiler) / first.stats().reps();
        }
        List<Map<String, Object>> utilization = new ArrayList<>();
        if (!ceilings.isEmpty()) {
            for (Side side : sides) {
                utilization.add(utilization(err, side.impl(), stepFlops, side.stats().median(), ceilings));
            }
        }
        if (profiler != null) {
            List<ProfileTable.Row> rows = ProfileTable.rows(profiler.totals(), first.stats().reps(), reps);
            ProfileTable.print(err, rows, reps, first.stepSeconds() * 1e3 / first.stats().reps());
            ProfileTable.printKernels(err, ProfileTable.named(profiler.kernels(), first.stats().reps(), reps), 12);
            if (common.json) {
                ProfileTable.printJson(cmd.getOut(), rows);
            }
        }
        if (torch != null) {
            double tokensPerS = first.stats().medianRate(batch * seq);
            Map<String, Object> theirs = torch.run(cmd, "torch_train.py", "--layers", cfg.nLayer(), "--d-model", cfg.dModel(),
                    "--heads", cfg.nHead(), "--vocab", cfg.vocab(), "--max-seq", cfg.maxSeq(), "--mlp-ratio", cfg.mlpRatio(),
                    "--seq", seq, "--batch", batch, "--steps", steps, "--warmup", warmup, "--threads", threads, "--dtype", dtype);
            double peerRate = Peer.number(theirs, "tokens_per_s");
            err.printf("kindling / %s = %.2fx tokens/s (same model, batch and threads, this run)%n", theirs.get("impl"),
                    tokensPerS / peerRate);
            err.flush();
            if (common.json) {
                Json.printLine(cmd.getOut(), theirs);
            }
            if (!ceilings.isEmpty()) {
                utilization.add(utilization(err, String.valueOf(theirs.get("impl")), stepFlops,
                        Peer.number(theirs, "ms_per_step") / 1e3, ceilings));
            }
        }
        if (common.json) {
            for (Map<String, Object> u : utilization) {
                Json.printLine(cmd.getOut(), u);
            }
        }
        return 0;
    }

    /**
     * One optimizer's run: a fresh model (the same seed for every side) trained on the same batches; its timing, its
     * split into forward, backward and optimizer (replica 0's means over the timed steps), and every step's loss and time.
     *
     * @param stepSeconds replica 0's step times summed over the timed steps: the profile's mean step
     * @param losses the loss of every step, warm-up first; {@code stepMs} their times
     */
    private record Side(String impl, Timing.Stats stats, double fwdMs, double bwdMs, double optMs, double stepSeconds,
                        int params, long activeParams, StepResult last, long peakBytes, double[] losses, double[] stepMs) {
    }

    private Side train(ModelConfig cfg, TrainConfig train, int reps, int perThreads, Profiler profiler, PrintWriter err)
            throws Exception {
        double[] split = new double[3];
        double[] stepSeconds = new double[1];
        double[] losses = new double[warmup + steps];
        double[] stepMs = new double[warmup + steps];
        int[] done = new int[1];
        StepResult[] last = new StepResult[1];
        String impl = "kindling" + (train.precision() == Precision.FP32 ? "" : " " + dtype)
                + (train.optimizer().isMfac() ? " mfac" : "");
        try (DataParallel dp = common.replicas(reps, perThreads, cfg, 1, train, profiler);
             Feeds feeds = feeds(cfg, reps)) {
            Trainer first = dp.replicas().get(0).trainer();
            err.printf("%s (per replica)%n", first.optimizer().describe());
            List<DataSource> sources = feeds.sources();
            Timing.Trial step = new Timing.Trial() {
                @Override
                public void run() {
                    last[0] = dp.step(sources);
                }

                @Override
                public void after() {
                    record(last[0], losses, stepMs, done);
                    // The profile covers the timed steps only.
                    if (profiler != null) {
                        profiler.reset();
                    }
                }
            };
            Timing.Trial counted = new Timing.Trial() {
                @Override
                public void run() {
                    last[0] = dp.step(sources);
                }

                @Override
                public void after() {
                    record(last[0], losses, stepMs, done);
                    split[0] += first.lastForwardMs();
                    split[1] += first.lastBackwardMs();
                    split[2] += first.lastOptimizerMs();
                    stepSeconds[0] += last[0].seconds();
                }
            };
            Timing.Stats stats = Timing.measure(new Timing.Rule(warmup, steps, 0), step, counted);
            // Replicas may share a device: count each device's peak once.
            long peakBytes = dp.replicas().stream().map(DataParallel.Replica::device).distinct().mapToLong(Device::peakBytes).sum();
            Side side = new Side(impl, stats, split[0] / steps, split[1] / steps, split[2] / steps, stepSeconds[0],
                    first.model().params().count(), first.model().parameterCounts().active(), last[0], peakBytes, losses, stepMs);
            err.printf("train %,d params, %,d active (L=%d C=%d H=%d V=%d), B=%d T=%d, %s, %d replica(s) x %d thread(s): %.0f "
                    + "tokens/s, %.1f ms/step (median of %d; best %.1f; forward %.1f, backward %.1f, optimizer %s %.1f), peak "
                    + "%.1f MB, last loss %.4f%s%n", side.params(), side.activeParams(), cfg.nLayer(), cfg.dModel(), cfg.nHead(),
                    cfg.vocab(), batch, seq, dtype, reps, perThreads, stats.medianRate(batch * seq), stats.median() * 1e3,
                    stats.reps(), stats.best() * 1e3, side.fwdMs(), side.bwdMs(), train.optimizer().type(), side.optMs(),
                    peakBytes / 1e6, last[0].loss(), last[0].metricsText());
            err.flush();
            return side;
        }
    }

    /** Keeps a step's loss and time, in step order (warm-up and timed steps alike). */
    private static void record(StepResult r, double[] losses, double[] stepMs, int[] done) {
        if (done[0] < losses.length) {
            losses[done[0]] = r.loss();
            stepMs[done[0]] = r.seconds() * 1e3;
            done[0]++;
        }
    }

    /**
     * The compared optimizers step by step: a table of loss and ms per step on stderr (the first side is the baseline,
     * the last column its loss minus each other's), and with --json a {@code train_step} row per side and step.
     */
    private void printSteps(CommandLine cmd, List<Side> sides) {
        PrintWriter err = cmd.getErr();
        StringBuilder head = new StringBuilder(String.format("%6s", "step"));
        for (Side s : sides) {
            head.append(String.format("  %18s loss %9s", s.impl(), "ms"));
        }
        err.println(head);
        for (int i = 0; i < warmup + steps; i++) {
            StringBuilder line = new StringBuilder(String.format("%6d", i + 1));
            for (Side s : sides) {
                line.append(String.format("  %23.4f %9.1f", s.losses()[i], s.stepMs()[i]));
            }
            err.println(line + (i < warmup ? "  (warm-up)" : ""));
        }
        Side base = sides.get(0);
        for (Side s : sides.subList(1, sides.size())) {
            err.printf("%s vs %s after %d steps: loss %.4f vs %.4f, median step %.1f vs %.1f ms (%.2fx), same batches, this run%n",
                    s.impl(), base.impl(), warmup + steps, s.last().loss(), base.last().loss(), s.stats().median() * 1e3,
                    base.stats().median() * 1e3, s.stats().median() / base.stats().median());
        }
        err.flush();
        if (common.json) {
            for (Side s : sides) {
                for (int i = 0; i < warmup + steps; i++) {
                    Map<String, Object> row = new LinkedHashMap<>();
                    row.put("bench", "train_step");
                    row.put("impl", s.impl());
                    row.put("step", i + 1);
                    row.put("timed", i >= warmup);
                    row.put("loss", Math.round(s.losses()[i] * 1e6) / 1e6);
                    row.put("ms", BenchOptions.round(s.stepMs()[i]));
                    Json.printLine(cmd.getOut(), row);
                }
            }
        }
    }

    /** The --optimizer list as configs: each name once; --ngrads only with mfac; the torch peer only against AdamW. */
    private List<OptimizerConfig> optimizers(CommandLine cmd, Peer torch) {
        List<OptimizerConfig> opts = new ArrayList<>();
        for (String name : optimizers) {
            OptimizerConfig opt = switch (name) {
                case OptimizerConfig.ADAMW -> OptimizerConfig.ADAMW_DEFAULT;
                case OptimizerConfig.MFAC -> {
                    if (ngrads < 1) {
                        throw new CommandLine.ParameterException(cmd, "--ngrads must be >= 1, got " + ngrads);
                    }
                    yield OptimizerConfig.mfac(ngrads, OptimizerConfig.DEFAULT_DAMP, OptimizerConfig.DEFAULT_MOMENTUM);
                }
                default -> throw new CommandLine.ParameterException(cmd, "--optimizer must list adamw and/or mfac, got "
                        + name);
            };
            if (opts.contains(opt)) {
                throw new CommandLine.ParameterException(cmd, "--optimizer lists " + name + " twice");
            }
            opts.add(opt);
        }
        boolean mfac = opts.stream().anyMatch(OptimizerConfig::isMfac);
        if (!mfac && cmd.getParseResult().hasMatchedOption("--ngrads")) {
            throw new CommandLine.ParameterException(cmd, "--ngrads is M-FAC's window: it needs --optimizer mfac");
        }
        if (mfac && torch != null) {
            throw new CommandLine.ParameterException(cmd, "--peer torch trains with AdamW: compare --optimizer mfac with "
                    + "--optimizer adamw instead");
        }
        return opts;
    }

    /** The tokenizer and chunk lengths of the --data dataset, or a usage error naming it. */
    private Shard.Info datasetInfo(CommandLine cmd) {
        try (DatasetReader r = new DatasetReader(data, new Configuration(), 1, 0, 1, Integer.MAX_VALUE)) {
            return r.info();
        } catch (IOException | IllegalArgumentException e) {
            throw new CommandLine.ParameterException(cmd, "--data " + data + ": " + e.getMessage());
        }
    }

    /** --vocab, else the dataset's vocabulary with --data, else the default. */
    private int vocabFor(CommandLine cmd, Shard.Info dataset) {
        return dataset != null && !cmd.getParseResult().hasMatchedOption("--vocab") ? dataset.vocabSize() : vocab;
    }

    /** The dataset's ids must be the model's and every chunk must fit a replica's batch and the model's context. */
    private void requireFits(CommandLine cmd, ModelConfig cfg, Shard.Info dataset, int reps) {
        if (cfg.vocab() < dataset.vocabSize()) {
            throw new CommandLine.ParameterException(cmd, "--data " + data + " has a vocabulary of " + dataset.vocabSize()
                    + " ids but the model only " + cfg.vocab());
        }
        int budget = batch / reps * seq;
        if (dataset.bucketMax() > budget || cfg.limited() && dataset.bucketMax() > cfg.maxSeq()) {
            throw new CommandLine.ParameterException(cmd, "--data " + data + " has chunks of up to " + dataset.bucketMax()
                    + " tokens: more than a replica's batch of " + budget + " tokens (--batch / replicas x --seq) or the "
                    + "model's max_seq " + cfg.maxSeq());
        }
    }

    /** Each replica's batches: random tokens, or its share of the --data dataset; a side's feeds start at its first batch. */
    private record Feeds(List<DataSource> sources, List<DatasetSource> readers) implements AutoCloseable {
        @Override
        public void close() {
            readers.forEach(DatasetSource::close);
        }
    }

    private Feeds feeds(ModelConfig cfg, int reps) throws IOException {
        if (data == null) {
            return new Feeds(randomTokens(cfg.vocab(), batch, seq, reps), List.of());
        }
        List<DatasetSource> readers = new ArrayList<>();
        try {
            for (int r = 0; r < reps; r++) {
                readers.add(new DatasetSource(new DatasetReader(data, new Configuration(), 1, r, reps, batch / reps * seq)));
            }
        } catch (IOException | RuntimeException e) {
            readers.forEach(DatasetSource::close);
            throw e;
        }
        return new Feeds(List.copyOf(readers), readers);
    }

    /**
     * --deq: the explicit model and the deep equilibrium model of the same width, one after the other in this run on
     * the same random tokens (or --data batches). Activation bytes are the device memory one training pass (forward and backward) adds on
     * top of the weights and gradients, plus, for the DEQ, the host memory its solver holds (its history of iterates).
     */
    private int compareDeq(CommandLine cmd, Precision precision, int threads) throws Exception {
        Shard.Info dataset = data == null ? null : datasetInfo(cmd);
        int vocabSize = vocabFor(cmd, dataset);
        ModelConfig explicit = ModelConfig.gpt(vocabSize, dModel, layers, heads, heads, seq, 4, 0, 0.02, 1e-5);
        ModelConfig equilibrium = ModelConfig.gpt(vocabSize, dModel, 1, heads, heads, seq, 4, 0, 0.02, 1e-5).withDeq(DeqConfig.defaults());
        if (dataset != null) {
            requireFits(cmd, explicit, dataset, 1);
        }
        TrainConfig train = new TrainConfig(1, lr, lr / 10, 0, warmup + steps, 0.1, 0.9, 0.95, 1e-8, 1.0, 1, batch * seq, 1, 0, 1)
                .withPrecision(precision);
        PrintWriter err = cmd.getErr();
        for (ModelConfig cfg : List.of(equilibrium, explicit)) {
            boolean isDeq = cfg.deq() != null;
            long activationBytes;
            Timing.Stats stats;
            StepResult[] last = new StepResult[1];
            try (DataParallel dp = common.replicas(1, threads, cfg, 1, train); Feeds feeds = feeds(cfg, 1);
                 Feeds samples = feeds(cfg, 1)) {
                List<DataSource> data = feeds.sources();
                DataParallel.Replica r = dp.replicas().get(0);
                Device dev = r.device();
                TokenBatch sample = samples.sources().get(0).next();
                long base = dev.liveBytes();
                dev.resetPeak();
                r.model().train(1, 1.0 / sample.size(), v -> { });
                r.model().forward(sample, 1f / sample.predicted());
                r.model().backward();
                r.model().eval();
                activationBytes = dev.peakBytes() - base;
                if (isDeq) {
                    DeqConfig d = cfg.deq();
                    activationBytes += FixedPointSolver.stateBytes(d.solver(), sample.size() * cfg.dModel(), d.history());
                }
                r.model().params().zeroGrad();
                Timing.Trial step = () -> last[0] = dp.step(data);
                stats = Timing.measure(new Timing.Rule(warmup, steps, 0), step, step);
            }
            Double fwdIters = last[0].metrics().get(DeqConfig.FWD_ITERS);
            Double bwdIters = last[0].metrics().get(DeqConfig.BWD_ITERS);
            double stepMs = stats.median() * 1e3;
            err.printf("%s: %d layer(s) C=%d H=%d V=%d, B=%d T=%d: activations %.2f MB, %.1f ms/step (median of %d), loss %.4f after "
                    + "%d steps%s%n", isDeq ? "deq" : "explicit", cfg.nLayer(), dModel, heads, cfg.vocab(), batch, seq, activationBytes / 1e6,
                    stepMs, stats.reps(), last[0].loss(), last[0].step(),
                    isDeq ? String.format(", forward %.1f / backward %.1f solver iterations", fwdIters, bwdIters) : "");
            err.flush();
            if (common.json) {
                Map<String, Object> row = new LinkedHashMap<>();
                row.put("bench", "train_deq");
                row.put("model", isDeq ? "deq" : "explicit");
                row.put("layers", cfg.nLayer());
                row.put("activation_bytes", activationBytes);
                row.put("step_ms", BenchOptions.round(stepMs));
                row.put("loss", BenchOptions.round(last[0].loss()));
                row.put("fwd_iters", fwdIters == null ? null : BenchOptions.round(fwdIters));
                row.put("bwd_iters", bwdIters == null ? null : BenchOptions.round(bwdIters));
                Json.printLine(cmd.getOut(), row);
            }
        }
        return 0;
    }

    /**
     * The machine's GEMM ceiling, measured in this run on all {@code threads}: the backend's GEMM and, with the peer,
     * PyTorch's, at --ceiling cubed, in the step's operand precision (fp32 on the CPU, which widens bf16), one row each.
     */
    private List<Map<String, Object>> ceilings(CommandLine cmd, Peer torch, int threads, Precision precision) throws Exception {
        SplittableRandom rnd = new SplittableRandom(42);
        float[] a = BenchOptions.uniform(rnd, ceiling * ceiling);
        float[] b = BenchOptions.uniform(rnd, ceiling * ceiling);
        Gemm g = Gemm.of(false, false, ceiling, ceiling, ceiling);
        Timing.Rule rule = new Timing.Rule(2, 3, 1.0);
        List<Map<String, Object>> rows = new ArrayList<>();
        Device.Kind kind;
        int ordinal;
        String dtype;
        try (Device dev = common.open(threads)) {
            kind = dev.kind();
            ordinal = dev.ordinal();
            DType operands = precision == Precision.BF16 && kind != Device.Kind.CPU ? DType.BF16 : DType.F32;
            dtype = operands == DType.BF16 ? "bf16" : "fp32";
            Timing.Stats stats = GemmBench.time(dev, g, operands, a, b, new float[ceiling * ceiling], rule);
            rows.add(ceilingRow(dev.backend().gemmImpl() + (operands == DType.BF16 ? " bf16" : ""), threads,
                    stats.bestRate(g.flops()) / 1e9));
        }
        if (torch != null) {
            Map<String, Object> theirs = kind == Device.Kind.CUDA
                    ? torch.run(cmd, "torch_gemm.py", "--m", ceiling, "--n", ceiling, "--k", ceiling, "--threads", threads,
                            "--seconds", rule.seconds(), "--device", "cuda:" + ordinal, "--dtype", dtype)
                    : torch.run(cmd, "torch_gemm.py", "--m", ceiling, "--n", ceiling, "--k", ceiling, "--threads", threads,
                            "--seconds", rule.seconds());
            rows.add(ceilingRow(String.valueOf(theirs.get("impl")), threads, Peer.number(theirs, "gflops")));
        }
        return rows;
    }

    private Map<String, Object> ceilingRow(String impl, int threads, double gflops) {
        Map<String, Object> row = new LinkedHashMap<>();
        row.put("bench", "train_ceiling");
        row.put("impl", impl);
        row.put("n", ceiling);
        row.put("threads", threads);
        row.put("gflops", BenchOptions.round(gflops));
        return row;
    }

    /**
     * A side's step as a share of the ceiling: the FLOPs Kindling's kernels count in one step (the same model and
     * batch for the peer) over that side's median step seconds; on stderr, and as a row for --json.
     */
    private Map<String, Object> utilization(PrintWriter err, String impl, double stepFlops, double stepSeconds,
                                            List<Map<String, Object>> ceilings) {
        double best = bestCeiling(ceilings);
        double achieved = stepFlops / stepSeconds / 1e9;
        err.printf("%s: %.4g GFLOP per step (counted by the profiler), %.1f GFLOP/s at the median step = %.0f%% of the GEMM "
                + "ceiling %.1f GFLOP/s (best %dx%dx%d GEMM of this run: %s)%n", impl, stepFlops / 1e9, achieved,
                100 * achieved / best, best, ceiling, ceiling, ceiling, ceilingNames(ceilings));
        err.flush();
        Map<String, Object> row = new LinkedHashMap<>();
        row.put("bench", "train_utilization");
        row.put("impl", impl);
        row.put("gflop_per_step", Double.parseDouble(String.format(java.util.Locale.ROOT, "%.4g", stepFlops / 1e9)));
        row.put("gflops", BenchOptions.round(achieved));
        row.put("ceiling_gflops", BenchOptions.round(best));
        row.put("ceiling_share", Math.round(achieved / best * 1e4) / 1e4);
        return row;
    }

    private static double bestCeiling(List<Map<String, Object>> rows) {
        return rows.stream().mapToDouble(r -> ((Number) r.get("gflops")).doubleValue()).max().orElseThrow();
    }

    private static String ceilingNames(List<Map<String, Object>> rows) {
        StringBuilder sb = new StringBuilder();
        for (Map<String, Object> r : rows) {
            sb.append(sb.length() == 0 ? "" : ", ").append(r.get("impl")).append(' ').append(r.get("gflops"));
        }
        return sb.toString();
    }

    /** The FLOPs a profiler counted in all its kernels. */
    private static double flops(Profiler profiler) {
        return profiler.totals().values().stream().mapToDouble(Profiler.Totals::flops).sum();
    }

    /** {@code batch} random sequences split evenly over {@code replicas} sources, each drawing its own. */
    private static List<DataSource> randomTokens(int vocab, int batch, int seq, int replicas) {
        List<DataSource> data = new ArrayList<>();
        for (int r = 0; r < replicas; r++) {
            data.add(randomTokens(vocab, batch / replicas, seq, r, replicas));
        }
        return data;
    }

    /** Random sequences; replica {@code rank} of {@code replicas} gets its own. */
    private static DataSource randomTokens(int vocab, int batch, int seq, int rank, int replicas) {
        return DataSource.indexed(position -> {
            SplittableRandom r = new SplittableRandom(position * replicas + rank);
            int[] tokens = new int[batch * seq];
            int[] cu = new int[batch + 1];
            for (int i = 0; i < tokens.length; i++) {
                tokens[i] = r.nextInt(vocab);
            }
            for (int b = 0; b <= batch; b++) {
                cu[b] = b * seq;
            }
            return new TokenBatch(tokens, cu);
        });
    }
}
