package org.kindling.cli;

import java.io.PrintWriter;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.Callable;
import org.kindling.api.Presets;
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

    @Option(names = "--optimizer", description = {"the update: adamw, or mfac (M-FAC over a window of --ngrads gradients, the",
        "config's default damping and no momentum) (default ${DEFAULT-VALUE})"}, defaultValue = "adamw")
    String optimizer;

    @Option(names = "--ngrads", description = "M-FAC's window with --optimizer mfac (default ${DEFAULT-VALUE})", defaultValue = "16")
    int ngrads;

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
            for (String o : List.of("--preset", "--set", "--peer", "--profile", "--replicas", "--optimizer", "--ngrads")) {
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
        ModelConfig cfg;
        try {
            cfg = preset != null ? RunConfig.load(Presets.resolve(preset), overrides).model()
                    : ModelConfig.gpt(vocab, dModel, layers, heads, heads, seq, 4, 0, 0.02, 1e-5);
        } catch (IllegalArgumentException e) {
            throw new CommandLine.ParameterException(cmd, e.getMessage());
        }
        if (cfg.limited() && seq > cfg.maxSeq()) {
            throw new CommandLine.ParameterException(cmd, "--seq " + seq + " exceeds the model's max_seq " + cfg.maxSeq());
        }
        OptimizerConfig opt;
        if (optimizer.equals(OptimizerConfig.ADAMW)) {
            if (cmd.getParseResult().hasMatchedOption("--ngrads")) {
                throw new CommandLine.ParameterException(cmd, "--ngrads is M-FAC's window: it needs --optimizer mfac");
            }
            opt = OptimizerConfig.ADAMW_DEFAULT;
        } else if (optimizer.equals(OptimizerConfig.MFAC)) {
            if (ngrads < 1) {
                throw new CommandLine.ParameterException(cmd, "--ngrads must be >= 1, got " + ngrads);
            }
            if (torch != null) {
                throw new CommandLine.ParameterException(cmd, "--peer torch trains with AdamW: compare --optimizer mfac with "
                        + "--optimizer adamw instead");
            }
            opt = OptimizerConfig.mfac(ngrads, OptimizerConfig.DEFAULT_DAMP, OptimizerConfig.DEFAULT_MOMENTUM);
        } else {
            throw new CommandLine.ParameterException(cmd, "--optimizer must be adamw or mfac, got " + optimizer);
        }
        TrainConfig train = new TrainConfig(1, 1e-4, 1e-5, 0, warmup + steps, 0.1, 0.9, 0.95, 1e-8, 1.0, 1, batch * seq, 1, 0, 1)
                .withPrecision(precision).withOptimizer(opt);
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
            try (DataParallel dp = common.replicas(reps, perThreads, cfg, 1, train, counter)) {
                dp.step(randomTokens(cfg.vocab(), batch, seq, reps));
            }
            stepFlops = flops(counter);
        }
        double[] split = new double[3];
        // Replica 0's step times summed over the timed steps: the profile's mean step.
        double[] stepSeconds = new double[1];
        Timing.Stats stats;
        int params;
        long activeParams;
        // The final step's result, for its layer metrics.
        StepResult[] last = new StepResult[1];
        long peakBytes;
        Profiler profiler = profile ? new Profiler() : null;
        try (DataParallel dp = common.replicas(reps, perThreads, cfg, 1, train, profiler)) {
            Trainer first = dp.replicas().get(0).trainer();
            err.printf("%s (per replica)%n", first.optimizer().describe());
            params = first.model().params().count();
            activeParams = first.model().parameterCounts().active();
            List<DataSource> data = randomTokens(cfg.vocab(), batch, seq, reps);
            Timing.Trial step = new Timing.Trial() {
                @Override
                public void run() {
                    last[0] = dp.step(data);
                }

                @Override
                public void after() {
                    // The profile covers the timed steps only.
                    if (profiler != null) {
                        profiler.reset();
                    }
                }
            };
            Timing.Trial counted = new Timing.Trial() {
                @Override
                public void run() {
                    last[0] = dp.step(data);
                }

                @Override
                public void after() {
                    split[0] += first.lastForwardMs();
                    split[1] += first.lastBackwardMs();
                    split[2] += first.lastOptimizerMs();
                    stepSeconds[0] += last[0].seconds();
                }
            };
            stats = Timing.measure(new Timing.Rule(warmup, steps, 0), step, counted);
            // Replicas may share a device: count each device's peak once.
            peakBytes = dp.replicas().stream().map(DataParallel.Replica::device).distinct().mapToLong(Device::peakBytes).sum();
        }
        double msPerStep = stats.median() * 1e3;
        double tokensPerS = stats.medianRate(batch * seq);
        double fwd = split[0] / steps;
        double bwd = split[1] / steps;
        double optMs = split[2] / steps;
        if (profiler != null) {
            stepFlops = flops(profiler) / stats.reps();
        }
        err.printf("train %,d params, %,d active (L=%d C=%d H=%d V=%d), B=%d T=%d, %s, %d replica(s) x %d thread(s): %.0f tokens/s, "
                + "%.1f ms/step (median of %d; best %.1f; forward %.1f, backward %.1f, optimizer %s %.1f), peak %.1f MB, last loss %.4f%s%n",
                params, activeParams, cfg.nLayer(), cfg.dModel(), cfg.nHead(), cfg.vocab(), batch, seq, dtype, reps, perThreads, tokensPerS,
                msPerStep, stats.reps(), stats.best() * 1e3, fwd, bwd, optimizer, optMs, peakBytes / 1e6, last[0].loss(), last[0].metricsText());
        err.flush();
        if (common.json) {
            Map<String, Object> row = new LinkedHashMap<>();
            row.put("bench", "train");
            row.put("params", params);
            row.put("seq", seq);
            row.put("batch", batch);
            row.put("tokens_per_s", BenchOptions.round(tokensPerS));
            row.put("ms_per_step", BenchOptions.round(msPerStep));
            row.put("fwd_ms", BenchOptions.round(fwd));
            row.put("bwd_ms", BenchOptions.round(bwd));
            row.put("opt_ms", BenchOptions.round(optMs));
            row.put("impl", "kindling" + (precision == Precision.FP32 ? "" : " " + dtype) + (opt.isMfac() ? " mfac" : ""));
            row.put("active_params", activeParams);
            row.put("peak_mb", BenchOptions.round(peakBytes / 1e6));
            Json.putMetrics(row, last[0].metrics());
            Json.printLine(cmd.getOut(), row);
            for (Map<String, Object> c : ceilings) {
                Json.printLine(cmd.getOut(), c);
            }
        }
        List<Map<String, Object>> utilization = new ArrayList<>();
        if (!ceilings.isEmpty()) {
            utilization.add(utilization(err, "kindling" + (precision == Precision.FP32 ? "" : " " + dtype), stepFlops,
                    stats.median(), ceilings));
        }
        if (profiler != null) {
            List<ProfileTable.Row> rows = ProfileTable.rows(profiler.totals(), stats.reps(), reps);
            ProfileTable.print(err, rows, reps, stepSeconds[0] * 1e3 / stats.reps());
            ProfileTable.printKernels(err, ProfileTable.named(profiler.kernels(), stats.reps(), reps), 12);
            if (common.json) {
                ProfileTable.printJson(cmd.getOut(), rows);
            }
        }
        if (torch != null) {
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
     * --deq: the explicit model and the deep equilibrium model of the same width, one after the other in this run on
     * the same random tokens. Activation bytes are the device memory one training pass (forward and backward) adds on
     * top of the weights and gradients, plus, for the DEQ, the host memory its solver holds (its history of iterates).
     */
    private int compareDeq(CommandLine cmd, Precision precision, int threads) throws Exception {
        ModelConfig explicit = ModelConfig.gpt(vocab, dModel, layers, heads, heads, seq, 4, 0, 0.02, 1e-5);
        ModelConfig equilibrium = ModelConfig.gpt(vocab, dModel, 1, heads, heads, seq, 4, 0, 0.02, 1e-5).withDeq(DeqConfig.defaults());
        TrainConfig train = new TrainConfig(1, 1e-4, 1e-5, 0, warmup + steps, 0.1, 0.9, 0.95, 1e-8, 1.0, 1, batch * seq, 1, 0, 1)
                .withPrecision(precision);
        PrintWriter err = cmd.getErr();
        for (ModelConfig cfg : List.of(equilibrium, explicit)) {
            boolean isDeq = cfg.deq() != null;
            List<DataSource> data = randomTokens(cfg.vocab(), batch, seq, 1);
            long activationBytes;
            Timing.Stats stats;
            StepResult[] last = new StepResult[1];
            try (DataParallel dp = common.replicas(1, threads, cfg, 1, train)) {
                DataParallel.Replica r = dp.replicas().get(0);
                Device dev = r.device();
                TokenBatch sample = randomTokens(cfg.vocab(), batch, seq, 1).get(0).next();
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
                    + "%d steps%s%n", isDeq ? "deq" : "explicit", cfg.nLayer(), dModel, heads, vocab, batch, seq, activationBytes / 1e6,
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
