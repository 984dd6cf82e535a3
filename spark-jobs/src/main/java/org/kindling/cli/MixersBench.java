package org.kindling.cli;

import java.io.PrintWriter;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.Callable;
import org.kindling.models.config.LayerDefaults;
import org.kindling.models.mixers.MixerSpec;
import org.kindling.models.mixers.Mixers;
import org.kindling.models.mixers.TokenMixer;
import org.kindling.models.nn.LayerContext;
import org.kindling.models.nn.Params;
import org.kindling.models.nn.Seqs;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

@Command(name = "mixers", mixinStandardHelpOptions = true,
        description = {"Forward+backward time of ONE token-mixer layer per mixer at equal width, beside attention (the baseline,",
            "measured in the same run by the same rule: one warm-up run, then --reps timed runs, the best reported), with the",
            "peak bytes the layer allocates beyond its weights, input and gradients; prints each mixer's ratio to attention",
            "at every length and the crossover: the shortest measured length where it is faster than attention."})
final class MixersBench implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--mixer", split = ",", completionCandidates = MixerChoice.class,
            description = "token mixers to measure beside attention (default: every registered one: ${COMPLETION-CANDIDATES})")
    List<String> mixers;

    @Option(names = "--seq", split = ",", description = "tokens per sequence T, one row per value (default ${DEFAULT-VALUE})",
            defaultValue = "1024,4096,16384")
    List<Integer> seqs;

    @Option(names = "--d-model", description = "channels C of every mixer (default ${DEFAULT-VALUE})", defaultValue = "256")
    int dModel;

    @Option(names = "--heads", description = "heads of mixers that have them (default ${DEFAULT-VALUE})", defaultValue = "4")
    int heads;

    @Option(names = "--batch", description = "sequences B of --seq tokens each, packed (default ${DEFAULT-VALUE})", defaultValue = "1")
    int batch;

    @Option(names = "--reps", description = "timed repetitions after one warm-up; the best is reported (default ${DEFAULT-VALUE})",
            defaultValue = "3")
    int reps;

    @CommandLine.Mixin
    BenchOptions common;

    /** Best milliseconds of forward+backward and the peak bytes allocated beyond those live before the warm-up. */
    record Result(double ms, long extraBytes) {
    }

    @Override
    public Integer call() throws Exception {
        CommandLine cmd = spec.commandLine();
        BenchOptions.requirePositive(cmd, "--d-model", dModel, "--heads", heads, "--batch", batch, "--reps", reps);
        List<Integer> lengths = MixerChoice.positiveList(cmd, "--seq", seqs);
        List<String> names = MixerChoice.withBaseline(cmd, mixers);
        int threads = common.threads(cmd);
        Map<String, MixerSpec> specs = new LinkedHashMap<>();
        for (String m : names) {
            try {
                specs.put(m, Mixers.named(m, new LayerDefaults(dModel, heads, heads, 4)));
            } catch (IllegalArgumentException e) {
                throw new CommandLine.ParameterException(cmd, e.getMessage());
            }
        }
        PrintWriter err = cmd.getErr();
        err.printf("one token-mixer layer, C=%d, B=%d, %d threads; forward+backward, best of %d runs after one warm-up%n", dModel,
                batch, threads, reps);
        Map<String, Integer> crossover = new HashMap<>();
        for (int seq : lengths) {
            double baselineMs = 0;
            for (String m : names) {
                Result r = measure(specs.get(m), seq, threads);
                if (m.equals(MixerChoice.BASELINE)) {
                    baselineMs = r.ms();
                    err.printf("  T=%-6d %-12s %10.2f ms  extra %s%n", seq, m, r.ms(), BenchOptions.mib(r.extraBytes()));
                } else {
                    err.printf("  T=%-6d %-12s %10.2f ms  extra %s  (attention %.2f ms: %.2fx its time)%n", seq, m, r.ms(),
                            BenchOptions.mib(r.extraBytes()), baselineMs, r.ms() / baselineMs);
                    if (r.ms() < baselineMs) {
                        crossover.merge(m, seq, Math::min);
                    }
                }
                err.flush();
                if (common.json) {
                    Map<String, Object> row = new LinkedHashMap<>();
                    row.put("bench", "mixers");
                    row.put("mixer", m);
                    row.put("seq", seq);
                    row.put("fwd_bwd_ms", BenchOptions.round(r.ms()));
                    row.put("extra_bytes", r.extraBytes());
                    Json.printLine(cmd.getOut(), row);
                }
            }
        }
        for (String m : names.subList(1, names.size())) {
            Integer at = crossover.get(m);
            err.printf("  crossover %s: %s%n", m, at == null ? "none measured" : "faster than attention from T=" + at);
        }
        err.flush();
        return 0;
    }

    /** Times one layer on a fresh device; running out of memory (or past a tensor's size limit) is an error naming the length. */
    private Result measure(MixerSpec mixerSpec, int seq, int threads) throws Exception {
        long tokens = (long) batch * seq;
        if (tokens * dModel > Integer.MAX_VALUE) {
            throw new CommandLine.ParameterException(spec.commandLine(), "--seq " + seq + " × --batch " + batch + " × --d-model " + dModel
                    + " exceeds one tensor's 2^31-1 elements");
        }
        try {
            return time(mixerSpec, (int) tokens, seq, threads);
        } catch (OutOfMemoryError e) {
            throw new IllegalStateException("out of memory measuring " + mixerSpec.type() + " at --seq " + seq
                    + "; measure shorter lengths or give the JVM more heap (KINDLING_JAVA_OPTS=-Xmx…)", e);
        } catch (IllegalArgumentException e) {
            throw new IllegalStateException(mixerSpec.type() + " at --seq " + seq + ": " + e.getMessage(), e);
        }
    }

    private Result time(MixerSpec mixerSpec, int tokens, int seq, int threads) throws Exception {
        int c = dModel;
        int[] cu = new int[batch + 1];
        int[] pos = new int[tokens];
        for (int b = 0; b < batch; b++) {
            cu[b + 1] = cu[b] + seq;
            for (int i = 0; i < seq; i++) {
                pos[cu[b] + i] = i;
            }
        }
        SplittableRandom rnd = new SplittableRandom(1);
        Params.Builder pb = new Params.Builder();
        try (Device dev = common.open(threads);
             TokenMixer layer = mixerSpec.build(new LayerContext(pb, dev, "h.0." + mixerSpec.paramPrefix(), c, 0, 1, 0.02, 1));
             Params params = pb.build(dev, 1);
             Tensor x = dev.fromFloats(BenchOptions.uniform(rnd, tokens * c), tokens, c);
             Tensor dy = dev.fromFloats(BenchOptions.uniform(rnd, tokens * c), tokens, c);
             Tensor y = dev.allocate(DType.F32, tokens, c);
             Tensor dx = dev.allocate(DType.F32, tokens, c);
             Tensor cuSeqlens = dev.fromInts(cu, cu.length);
             Tensor positions = dev.fromInts(pos, tokens)) {
            Seqs s = new Seqs(cuSeqlens, positions, cu);
            long base = dev.liveBytes();
            dev.resetPeak();
            Timing.Stats stats = Timing.measure(new Timing.Rule(1, reps, 0), new Timing.Trial() {
                @Override
                public void before() {
                    // backward accumulates into dx and the gradients: start every run from zero, untimed.
                    params.zeroGrad();
                    dev.backend().fill(dx, 0f);
                }

                @Override
                public void run() {
                    layer.forward(y, x, s);
                    layer.backward(dx, dy, s);
                    Timing.finish(dev, "the mixer");
                }
            });
            return new Result(stats.best() * 1e3, dev.peakBytes() - base);
        }
    }

}
