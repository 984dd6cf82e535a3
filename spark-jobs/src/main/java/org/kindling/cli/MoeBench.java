package org.kindling.cli;

import java.io.PrintWriter;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.Callable;
import org.kindling.models.channel.ChannelMixer;
import org.kindling.models.channel.ChannelSpec;
import org.kindling.models.channel.MlpSpec;
import org.kindling.models.channel.MoeSpec;
import org.kindling.models.nn.LayerContext;
import org.kindling.models.nn.Params;
import org.kindling.models.nn.StepContext;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

@Command(name = "moe", mixinStandardHelpOptions = true,
        description = {"Forward+backward time of ONE mixture-of-experts layer, dropless and with each capacity factor, beside a",
            "dense MLP of the same per-token FLOPs (hidden k·ffn, no biases), all on the same random input and measured in the",
            "same run by the same rule (one warm-up, then --reps timed runs, the best reported), with the fraction of",
            "(token, expert) entries a capacity drops; prints dropless / dense and dropless / each capacity."})
final class MoeBench implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--experts", description = "experts E (default ${DEFAULT-VALUE})", defaultValue = "8")
    int experts;

    @Option(names = "--top-k", description = "experts per token k (default ${DEFAULT-VALUE})", defaultValue = "1")
    int topK;

    @Option(names = "--tokens", description = "tokens T in the layer's input (default ${DEFAULT-VALUE})", defaultValue = "8192")
    int tokens;

    @Option(names = "--d-model", description = "channels C (default ${DEFAULT-VALUE})", defaultValue = "512")
    int dModel;

    @Option(names = "--ffn", description = "each expert's hidden width H (default ${DEFAULT-VALUE})", defaultValue = "2048")
    int ffn;

    @Option(names = "--capacity-factors", split = ",", description = "capacity factors to measure, each above 0 "
            + "(default ${DEFAULT-VALUE})", defaultValue = "1.0,1.25,2.0")
    List<Double> capacityFactors;

    @Option(names = "--reps", description = "timed repetitions after one warm-up; the best is reported (default ${DEFAULT-VALUE})",
            defaultValue = "3")
    int reps;

    @CommandLine.Mixin
    BenchOptions common;

    /** Best milliseconds of forward+backward and the layer's dropped fraction in the last timed run. */
    record Result(double ms, double dropped) {
    }

    /** One measured layer: its impl name, capacity factor (null when it has none) and spec. */
    private record Case(String impl, Double factor, ChannelSpec spec) {
    }

    @Override
    public Integer call() throws Exception {
        CommandLine cmd = spec.commandLine();
        BenchOptions.requirePositive(cmd, "--experts", experts, "--top-k", topK, "--tokens", tokens, "--d-model", dModel, "--ffn", ffn,
                "--reps", reps);
        if (topK > experts) {
            throw new CommandLine.ParameterException(cmd, "--top-k " + topK + " exceeds --experts " + experts);
        }
        long denseHidden = (long) topK * ffn;
        if (denseHidden % dModel != 0) {
            throw new CommandLine.ParameterException(cmd, "--top-k " + topK + " × --ffn " + ffn + " = " + denseHidden
                    + " is not a multiple of --d-model " + dModel + ": the dense MLP of equal FLOPs has hidden width k·ffn as a "
                    + "whole ratio of d_model");
        }
        List<Double> factors = new ArrayList<>();
        for (double f : capacityFactors) {
            if (!(f > 0) || Double.isInfinite(f)) {
                throw new CommandLine.ParameterException(cmd, "--capacity-factors must be finite and above 0, got " + f);
            }
            if (factors.contains(f)) {
                throw new CommandLine.ParameterException(cmd, "--capacity-factors lists " + f + " twice");
            }
            factors.add(f);
        }
        // The largest tensors: [T, C] inputs, and the experts' [S, H] rows (S = T·k dropless, E·capacity with one).
        long rows = (long) tokens * topK;
        for (double f : factors) {
            rows = Math.max(rows, (long) experts * (long) Math.max(1, Math.ceil(f * tokens * topK / experts)));
        }
        if ((long) tokens * dModel > Integer.MAX_VALUE || rows * Math.max(ffn, dModel) > Integer.MAX_VALUE
                || (long) tokens * denseHidden > Integer.MAX_VALUE) {
            throw new CommandLine.ParameterException(cmd, "--tokens " + tokens + " with --d-model " + dModel + ", --ffn " + ffn
                    + ", --top-k " + topK + " and the capacity factors exceeds one tensor's 2^31-1 elements");
        }
        int threads = common.threads(cmd);
        List<Case> cases = new ArrayList<>();
        try {
            cases.add(new Case("dropless", null, moe(0)));
            for (double f : factors) {
                cases.add(new Case("capacity", f, moe(f)));
            }
            cases.add(new Case("dense", null, new MlpSpec((int) (denseHidden / dModel), false)));
        } catch (IllegalArgumentException e) {
            throw new CommandLine.ParameterException(cmd, e.getMessage());
        }
        SplittableRandom rnd = new SplittableRandom(1);
        float[] x = BenchOptions.uniform(rnd, tokens * dModel);
        float[] dy = BenchOptions.uniform(rnd, tokens * dModel);
        PrintWriter err = cmd.getErr();
        err.printf("one channel-mixer layer, T=%d C=%d, %d experts of H=%d, k=%d, dense MLP H=%d, %d threads; forward+backward, "
                + "best of %d runs after one warm-up%n", tokens, dModel, experts, ffn, topK, denseHidden, threads, reps);
        err.printf("  %-10s %8s %12s %10s%n", "impl", "capacity", "ms", "dropped");
        Map<Case, Result> results = new LinkedHashMap<>();
        for (Case c : cases) {
            Result r = measure(c, x, dy, threads);
            results.put(c, r);
            err.printf("  %-10s %8s %12.2f %10.4f%n", c.impl(), c.factor() == null ? "-" : c.factor(), r.ms(), r.dropped());
            err.flush();
            if (common.json) {
                Map<String, Object> row = new LinkedHashMap<>();
                row.put("bench", "moe");
                row.put("impl", c.impl());
                row.put("capacity_factor", c.factor());
                row.put("ms", BenchOptions.round(r.ms()));
                row.put("dropped_fraction", r.dropped());
                Json.printLine(cmd.getOut(), row);
            }
        }
        double dropless = results.get(cases.get(0)).ms();
        err.printf("  dropless / dense = %.2fx its time%n", dropless / results.get(cases.get(cases.size() - 1)).ms());
        for (Case c : cases.subList(1, cases.size() - 1)) {
            err.printf("  dropless / capacity-%s = %.2fx its time%n", c.factor(), dropless / results.get(c).ms());
        }
        err.flush();
        return 0;
    }

    /** The mixture under test, with the config's default auxiliary losses and no jitter (0: dropless). */
    private MoeSpec moe(double factor) {
        return new MoeSpec(experts, ffn, topK, factor, 0.01, 0.001, 0);
    }

    /** Times one layer on a fresh device; running out of memory is an error naming the layer. */
    private Result measure(Case c, float[] x, float[] dy, int threads) throws Exception {
        try {
            return time(c.spec(), x, dy, threads);
        } catch (OutOfMemoryError e) {
            throw new IllegalStateException("out of memory measuring " + c.impl() + (c.factor() == null ? "" : " " + c.factor())
                    + " at --tokens " + tokens + "; measure fewer tokens or give the JVM more heap (KINDLING_JAVA_OPTS=-Xmx…)", e);
        }
    }

    private Result time(ChannelSpec layerSpec, float[] xs, float[] dys, int threads) throws Exception {
        int c = dModel;
        double[] dropped = new double[1];
        Params.Builder pb = new Params.Builder();
        try (Device dev = common.open(threads);
             StepContext step = new StepContext();
             ChannelMixer layer = layerSpec.build(new LayerContext(pb, dev, "h.0." + layerSpec.paramPrefix(), c, 0, 1, 0.02, 1, step));
             Params params = pb.build(dev, 1);
             Tensor x = dev.fromFloats(xs, tokens, c);
             Tensor dy = dev.fromFloats(dys, tokens, c);
             Tensor y = dev.allocate(DType.F32, tokens, c);
             Tensor dx = dev.allocate(DType.F32, tokens, c)) {
            // Training mode: the router's auxiliary losses and metrics run as they do in a training step.
            step.train(1, 1.0 / tokens, v -> { });
            Timing.Stats stats = Timing.measure(new Timing.Rule(1, reps, 0), new Timing.Trial() {
                @Override
                public void before() {
                    // backward accumulates into dx and the gradients, and metrics add up: start every run from zero, untimed.
                    params.zeroGrad();
                    dev.backend().fill(dx, 0f);
                    step.metrics().clear();
                }

                @Override
                public void run() {
                    layer.forward(y, x);
                    layer.backward(dx, dy);
                    Timing.finish(dev, "the layer");
                }

                @Override
                public void after() {
                    dropped[0] = step.metrics().values().getOrDefault(MoeSpec.DROPPED_FRACTION, 0.0);
                }
            });
            return new Result(stats.best() * 1e3, dropped[0]);
        }
    }
}
