package org.kindling.cli;

import java.io.PrintWriter;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.Callable;
import org.kindling.models.train.MfacWindow;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

@Command(name = "mfac", mixinStandardHelpOptions = true,
        description = {"Time of ONE M-FAC inverse-Fisher product F⁻¹x over a full window of M random gradients of D elements,",
            "per --m (two fp32 matrix-vector products on the device and an M×M double solve on the host: linear in M·D),",
            "beside the dense route at --dense-d elements in the same run: form F = λI + (1/M)·GᵀG in double, factor and solve",
            "(O(D²·M + D³)), whose result the M-FAC product at that size must match (a relative error above 1e-3 fails).",
            "Same timing rule for all (one warm-up, then at least --reps timed runs and --seconds of them, the best reported)."})
final class MfacBench implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--d", description = "parameters D of the window's gradients (default ${DEFAULT-VALUE})", defaultValue = "1000000")
    int d;

    @Option(names = "--m", split = ",", description = "window sizes M, one row each (default ${DEFAULT-VALUE})", defaultValue = "8,32,128")
    List<Integer> ms;

    @Option(names = "--dense-d", description = "D of the dense comparison, at the largest M (0 skips it; default ${DEFAULT-VALUE})",
            defaultValue = "2000")
    int denseD;

    @Option(names = "--damp", description = "damping λ (default ${DEFAULT-VALUE})", defaultValue = "1e-4")
    double damp;

    @Option(names = "--reps", description = "least timed runs after one warm-up; the best is reported (default ${DEFAULT-VALUE})",
            defaultValue = "3")
    int reps;

    @Option(names = "--seconds", description = "least seconds of timed runs per figure (default ${DEFAULT-VALUE})", defaultValue = "0")
    double seconds;

    @CommandLine.Mixin
    BenchOptions common;

    @Override
    public Integer call() throws Exception {
        CommandLine cmd = spec.commandLine();
        BenchOptions.requirePositive(cmd, "--d", d, "--reps", reps);
        if (!(seconds >= 0) || Double.isInfinite(seconds)) {
            throw new CommandLine.ParameterException(cmd, "--seconds must be a finite number >= 0, got " + seconds);
        }
        if (!(damp > 0) || !Double.isFinite(damp)) {
            throw new CommandLine.ParameterException(cmd, "--damp must be a finite number > 0, got " + damp);
        }
        if (denseD < 0 || denseD > 8192) {
            throw new CommandLine.ParameterException(cmd, "--dense-d must be in 0..8192 (its F is D² doubles), got " + denseD);
        }
        for (int m : ms) {
            if (m < 1) {
                throw new CommandLine.ParameterException(cmd, "--m values must be >= 1, got " + m);
            }
            if ((long) m * d > Integer.MAX_VALUE) {
                throw new CommandLine.ParameterException(cmd, "--m " + m + " × --d " + d + " exceeds one tensor's 2^31-1 elements");
            }
        }
        int threads = common.threads(cmd);
        PrintWriter err = cmd.getErr();
        err.printf("one F⁻¹x over a full window, damp %s, %d threads; best of at least %d runs after one warm-up%n", damp, threads, reps);
        try (Device dev = common.open(threads)) {
            for (int m : ms) {
                double ms = mfacMs(dev, m, d, null);
                err.printf("  mfac   d %9d  m %5d  %10.3f ms  %.3f ns per m·d%n", d, m, ms, ms * 1e6 / ((double) m * d));
                err.flush();
                print(cmd, "mfac", d, m, ms);
            }
            if (denseD > 0) {
                int m = ms.stream().mapToInt(Integer::intValue).max().orElseThrow();
                double[] mfacAtDense = new double[1];
                double fast = mfacMs(dev, m, denseD, mfacAtDense);
                err.printf("  mfac   d %9d  m %5d  %10.3f ms  (beside dense; relative difference %.2e)%n", denseD, m, fast,
                        mfacAtDense[0]);
                double dense = denseMs(m);
                err.printf("  dense  d %9d  m %5d  %10.3f ms  (%.0fx M-FAC's time at this d)%n", denseD, m, dense, dense / fast);
                err.flush();
                print(cmd, "mfac", denseD, m, fast);
                print(cmd, "dense", denseD, m, dense);
                if (!(mfacAtDense[0] <= 1e-3)) {
                    err.printf("M-FAC's product differs from the dense solve by %.2e (relative): more than 1e-3%n", mfacAtDense[0]);
                    err.flush();
                    return 1;
                }
            }
        }
        return 0;
    }

    private void print(CommandLine cmd, String impl, int dim, int m, double ms) {
        if (common.json) {
            Map<String, Object> row = new LinkedHashMap<>();
            row.put("bench", "mfac");
            row.put("impl", impl);
            row.put("d", dim);
            row.put("m", m);
            row.put("ms", BenchOptions.round(ms));
            Json.printLine(cmd.getOut(), row);
        }
    }

    private static List<float[]> gradients(int m, int dim) {
        SplittableRandom rnd = new SplittableRandom(m);
        List<float[]> out = new ArrayList<>();
        for (int i = 0; i < m; i++) {
            out.add(BenchOptions.uniform(rnd, dim));
        }
        return out;
    }

    /**
     * Best ms of one product at window m over dim elements; with {@code check}, also the product's
     * max relative difference from the dense double solve (only sensible at a small dim).
     */
    private double mfacMs(Device dev, int m, int dim, double[] check) throws Exception {
        List<float[]> grads = gradients(m, dim);
        float[] xs = BenchOptions.uniform(new SplittableRandom(-1), dim);
        try (MfacWindow w = new MfacWindow(dev, m, dim, damp); Tensor g = dev.allocate(DType.F32, dim);
             Tensor x = dev.fromFloats(xs, dim); Tensor out = dev.allocate(DType.F32, dim)) {
            for (int i = 0; i < m; i++) {
                g.copyFrom(grads.get(i));
                w.insert(i, g, 1f);
            }
            Timing.Stats s = Timing.measure(new Timing.Rule(1, reps, seconds), () -> {
                w.multiply(out, x);
                Timing.finish(dev, "the M-FAC product");
            });
            if (check != null) {
                double[] ref = MfacWindow.dense(grads, m, xs, damp);
                float[] got = out.toFloatArray();
                double scale = 0;
                double diff = 0;
                for (int i = 0; i < dim; i++) {
                    scale = Math.max(scale, Math.abs(ref[i]));
                    diff = Math.max(diff, Math.abs(ref[i] - got[i]));
                }
                check[0] = diff / scale;
            }
            return s.best() * 1e3;
        }
    }

    /** Best ms of the dense route at --dense-d: form F from the window, factor it and solve, all in double. */
    private double denseMs(int m) throws Exception {
        List<float[]> grads = gradients(m, denseD);
        float[] xs = BenchOptions.uniform(new SplittableRandom(-1), denseD);
        Timing.Stats s = Timing.measure(new Timing.Rule(1, reps, seconds), () -> MfacWindow.dense(grads, m, xs, damp));
        return s.best() * 1e3;
    }
}
