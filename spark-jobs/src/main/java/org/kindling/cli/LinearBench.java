package org.kindling.cli;

import java.io.PrintWriter;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.Callable;
import org.kindling.models.nn.LinearSpec;
import org.kindling.models.nn.Params;
import org.kindling.models.nn.PixelflyLinear;
import org.kindling.models.nn.Projection;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

@Command(name = "linear", mixinStandardHelpOptions = true,
        description = {"Forward and forward+backward time of ONE projection IN → OUT over TOKENS rows per implementation: dense,",
            "pixelfly (the paper's MLP setting: block 32, butterfly size 16, 2 factors, rank 32, S on the block-sparse GEMMs) and",
            "butterfly (a sum of butterfly matrices with as many parameters as pixelfly's, unless --butterfly-terms is given),",
            "all in the same run by the same rule (one warm-up, then at least --reps timed runs and --seconds of them, the best",
            "reported), with each one's trainable parameters; prints pixelfly's time as a multiple of dense's and of",
            "butterfly's."})
final class LinearBench implements Callable<Integer> {
    private static final Map<String, LinearSpec> IMPLS = new LinkedHashMap<>();

    static {
        IMPLS.put("dense", LinearSpec.DENSE);
        IMPLS.put("pixelfly", new LinearSpec(LinearSpec.Kind.PIXELFLY, PixelflyLinear.REFERENCE_BLOCK,
                PixelflyLinear.REFERENCE_BUTTERFLY_SIZE, PixelflyLinear.REFERENCE_FACTORS, PixelflyLinear.REFERENCE_RANK, false));
        IMPLS.put("butterfly", butterfly(1));
    }

    private static LinearSpec butterfly(int terms) {
        LinearSpec d = LinearSpec.DENSE;
        return new LinearSpec(LinearSpec.Kind.BUTTERFLY, d.block(), d.butterflySize(), d.factors(), d.rank(), false, terms);
    }

    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--in", description = "input width IC (default ${DEFAULT-VALUE})", defaultValue = "768")
    int in;

    @Option(names = "--out", description = "output width OC (default ${DEFAULT-VALUE})", defaultValue = "3072")
    int out;

    @Option(names = "--tokens", description = "rows T of x [T, IC] (default ${DEFAULT-VALUE})", defaultValue = "2048")
    int tokens;

    @Option(names = "--impl", split = ",", description = "implementations, in order: dense, pixelfly, butterfly (default ${DEFAULT-VALUE})",
            defaultValue = "dense,pixelfly,butterfly")
    List<String> impls;

    @Option(names = "--reps", description = "least timed runs after one warm-up; the best is reported (default ${DEFAULT-VALUE})",
            defaultValue = "3")
    int reps;

    @Option(names = "--seconds", description = "least seconds of timed runs per figure (default ${DEFAULT-VALUE})", defaultValue = "0")
    double seconds;

    @Option(names = "--butterfly-terms", description = "butterfly matrices summed by the butterfly implementation; 0: as many as "
            + "match pixelfly's parameters at these sizes when pixelfly is listed, else 1 (default ${DEFAULT-VALUE})", defaultValue = "0")
    int butterflyTerms;

    @CommandLine.Mixin
    BenchOptions common;

    /** Best milliseconds of the forward and of forward+backward, and the trainable elements. */
    record Result(double fwdMs, double fwdBwdMs, long params) {
    }

    @Override
    public Integer call() throws Exception {
        CommandLine cmd = spec.commandLine();
        BenchOptions.requirePositive(cmd, "--in", in, "--out", out, "--tokens", tokens, "--reps", reps);
        if (!(seconds >= 0) || Double.isInfinite(seconds)) {
            throw new CommandLine.ParameterException(cmd, "--seconds must be a finite number >= 0, got " + seconds);
        }
        if ((long) tokens * Math.max(in, out) > Integer.MAX_VALUE) {
            throw new CommandLine.ParameterException(cmd, "--tokens " + tokens + " × max(--in " + in + ", --out " + out
                    + ") exceeds one tensor's 2^31-1 elements");
        }
        for (String impl : impls) {
            if (!IMPLS.containsKey(impl)) {
                throw new CommandLine.ParameterException(cmd, "--impl " + impl + " is unknown; known: " + String.join(", ", IMPLS.keySet()));
            }
        }
        if (impls.stream().distinct().count() != impls.size()) {
            throw new CommandLine.ParameterException(cmd, "--impl names " + impls + " repeat an implementation");
        }
        if (butterflyTerms < 0) {
            throw new CommandLine.ParameterException(cmd, "--butterfly-terms must be >= 0, got " + butterflyTerms);
        }
        int threads = common.threads(cmd);
        PrintWriter err = cmd.getErr();
        Map<String, LinearSpec> specs = new LinkedHashMap<>(IMPLS);
        if (impls.contains("butterfly")) {
            int terms;
            try {
                terms = butterflyTerms > 0 ? butterflyTerms : impls.contains("pixelfly") ? matchedTerms(threads) : 1;
            } catch (IllegalArgumentException e) {
                throw new CommandLine.ParameterException(cmd, "--impl pixelfly at --in " + in + ", --out " + out
                        + " (to match butterfly's parameters to it): " + e.getMessage());
            }
            specs.put("butterfly", butterfly(terms));
            err.printf("butterfly: a sum of %d butterfly matrices%s%n", terms,
                    butterflyTerms == 0 && impls.contains("pixelfly") ? ", the parameters nearest pixelfly's" : "");
        }
        err.printf("one projection %d → %d over %d tokens, %d threads; best of at least %d runs after one warm-up%n", in, out, tokens,
                threads, reps);
        Map<String, Result> results = new LinkedHashMap<>();
        for (String impl : impls) {
            Result r;
            try {
                r = time(specs.get(impl), threads);
            } catch (IllegalArgumentException e) {
                throw new CommandLine.ParameterException(cmd, "--impl " + impl + " at --in " + in + ", --out " + out + ": " + e.getMessage());
            }
            results.put(impl, r);
            err.printf("  %-10s fwd %10.3f ms  fwd+bwd %10.3f ms  params %d%n", impl, r.fwdMs(), r.fwdBwdMs(), r.params());
            err.flush();
            if (common.json) {
                Map<String, Object> row = new LinkedHashMap<>();
                row.put("bench", "linear");
                row.put("impl", impl);
                row.put("fwd_ms", BenchOptions.round(r.fwdMs()));
                row.put("fwd_bwd_ms", BenchOptions.round(r.fwdBwdMs()));
                row.put("params", r.params());
                Json.printLine(cmd.getOut(), row);
            }
        }
        Result fly = results.get("pixelfly");
        for (String base : new String[] {"dense", "butterfly"}) {
            Result b = results.get(base);
            if (fly != null && b != null) {
                err.printf("  pixelfly vs %s: fwd %.2fx its time, fwd+bwd %.2fx its time, %.3fx its params%n", base,
                        fly.fwdMs() / b.fwdMs(), fly.fwdBwdMs() / b.fwdBwdMs(), fly.params() / (double) b.params());
            }
        }
        err.flush();
        return 0;
    }

    /** Butterfly terms whose twiddles come nearest pixelfly's trainable parameters (both add the same bias). */
    private int matchedTerms(int threads) {
        long fly = parameters(IMPLS.get("pixelfly"), threads);
        long one = parameters(butterfly(1), threads);
        return (int) Math.max(1, Math.round((double) (fly - out) / (one - out)));
    }

    private long parameters(LinearSpec linear, int threads) {
        Params.Builder pb = new Params.Builder();
        try (Device dev = common.open(threads);
             Projection layer = linear.build(pb, dev, "lin", in, out, true, 0.02)) {
            return pb.trainableCount();
        }
    }

    private Result time(LinearSpec linear, int threads) throws Exception {
        SplittableRandom rnd = new SplittableRandom(1);
        Params.Builder pb = new Params.Builder();
        try (Device dev = common.open(threads);
             Projection layer = linear.build(pb, dev, "lin", in, out, true, 0.02);
             Params params = pb.build(dev, 1);
             Tensor x = dev.fromFloats(BenchOptions.uniform(rnd, tokens * in), tokens, in);
             Tensor dy = dev.fromFloats(BenchOptions.uniform(rnd, tokens * out), tokens, out);
             Tensor y = dev.allocate(DType.F32, tokens, out);
             Tensor dx = dev.allocate(DType.F32, tokens, in)) {
            Timing.Rule rule = new Timing.Rule(1, reps, seconds);
            Timing.Stats fwd = Timing.measure(rule, () -> {
                layer.forward(y, x);
                Timing.finish(dev, "the forward");
            });
            Timing.Stats both = Timing.measure(rule, new Timing.Trial() {
                @Override
                public void before() {
                    // backward accumulates into dx and the gradients: start every run from zero, untimed.
                    params.zeroGrad();
                    dev.backend().fill(dx, 0f);
                }

                @Override
                public void run() {
                    layer.forward(y, x);
                    layer.backward(dx, dy);
                    Timing.finish(dev, "the forward and backward");
                }
            });
            return new Result(fwd.best() * 1e3, both.best() * 1e3, pb.trainableCount());
        }
    }
}
