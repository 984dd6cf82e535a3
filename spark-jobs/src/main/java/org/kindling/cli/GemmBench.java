package org.kindling.cli;

import java.io.PrintWriter;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.Callable;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Gemm;
import org.kindling.ops.Tensor;
import org.kindling.ops.cpu.CpuPool;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

@Command(name = "gemm", mixinStandardHelpOptions = true,
        description = {"GFLOP/s of the CPU backend's fp32 GEMM (C[M,N] = A[M,K]·B[K,N]) beside a plain i-k-j loop over the",
            "same matrices on the same threads, both timed by the same rule (warm-up, then best and median of the timed runs)",
            "in the same run. The backend's C is checked against the loop's; a max relative error above 1e-4 fails."})
final class GemmBench implements Callable<Integer> {
    /** Largest max|C − C_loop| / max|C_loop| accepted: fp32 sums of K products differ by rounding only. */
    static final double MAX_REL_ERROR = 1e-4;

    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--m", description = "rows of A and C (default ${DEFAULT-VALUE})", defaultValue = "1024")
    int m;

    @Option(names = "--n", description = "columns of B and C (default ${DEFAULT-VALUE})", defaultValue = "1024")
    int n;

    @Option(names = "--k", description = "columns of A, rows of B (default ${DEFAULT-VALUE})", defaultValue = "1024")
    int k;

    @Option(names = "--seconds", description = "least timed work for each side, after 2 warm-up runs and with at least 3 "
            + "timed runs (default ${DEFAULT-VALUE})", defaultValue = "2")
    double seconds;

    @Option(names = "--peer", description = "also run peers/torch_gemm.py (PyTorch on the same threads) in the same run: torch")
    String peer;

    @Option(names = "--python", description = "the Python for --peer (default: $KINDLING_PYTHON, else python3)")
    String python;

    @CommandLine.Mixin
    BenchOptions common;

    @Override
    public Integer call() throws Exception {
        CommandLine cmd = spec.commandLine();
        BenchOptions.requirePositive(cmd, "--m", m, "--n", n, "--k", k);
        if (!(seconds >= 0)) {
            throw new CommandLine.ParameterException(cmd, "--seconds must be 0 or more, got " + seconds);
        }
        Peer torch = Peer.parse(cmd, peer, python);
        int t = common.threads(cmd);
        PrintWriter err = cmd.getErr();
        SplittableRandom rnd = new SplittableRandom(42);
        float[] a = random(rnd, m * k);
        float[] b = random(rnd, k * n);
        Gemm g = Gemm.of(false, false, m, n, k);
        Timing.Rule rule = new Timing.Rule(2, 3, seconds);

        Timing.Stats fast;
        float[] c;
        String impl;
        try (Device dev = common.open(t);
             Tensor ta = dev.fromFloats(a, m, k);
             Tensor tb = dev.fromFloats(b, k, n);
             Tensor tc = dev.allocate(DType.F32, m, n)) {
            impl = dev.backend().gemmImpl();
            fast = Timing.measure(rule, () -> dev.backend().gemm(g, tc, ta, tb));
            c = tc.toFloatArray();
        }
        float[] plain = new float[m * n];
        Timing.Stats loop;
        try (CpuPool pool = new CpuPool(t)) {
            loop = Timing.measure(rule, () -> plainGemm(pool, a, b, plain, m, n, k));
        }
        double relError = maxRelError(c, plain);
        double gflops = fast.bestRate(g.flops()) / 1e9;
        double loopGflops = loop.bestRate(g.flops()) / 1e9;

        err.printf("gemm %dx%dx%d fp32, %d threads, best (median) of the timed runs:%n", m, n, k, t);
        err.printf("  %s: %.2f (%.2f) GFLOP/s over %d runs%n", impl, gflops, fast.medianRate(g.flops()) / 1e9, fast.reps());
        err.printf("  plain i-k-j loop: %.2f (%.2f) GFLOP/s over %d runs; the backend is %.1fx faster%n", loopGflops,
                loop.medianRate(g.flops()) / 1e9, loop.reps(), gflops / loopGflops);
        err.printf("  max |C - C_loop| / max |C_loop| = %.1e (limit %.0e)%n", relError, MAX_REL_ERROR);
        err.flush();
        if (common.json) {
            Map<String, Object> row = new LinkedHashMap<>();
            row.put("bench", "gemm");
            row.put("m", m);
            row.put("n", n);
            row.put("k", k);
            row.put("threads", t);
            row.put("gflops", BenchOptions.round(gflops));
            row.put("naive_gflops", BenchOptions.round(loopGflops));
            row.put("impl", impl);
            row.put("median_gflops", BenchOptions.round(fast.medianRate(g.flops()) / 1e9));
            row.put("naive_median_gflops", BenchOptions.round(loop.medianRate(g.flops()) / 1e9));
            row.put("max_rel_error", relError);
            Json.printLine(cmd.getOut(), row);
        }
        if (!(relError <= MAX_REL_ERROR)) {
            throw new IllegalStateException(String.format("the %s GEMM is wrong: max relative error %.3e against the plain loop "
                    + "exceeds %.0e", impl, relError, MAX_REL_ERROR));
        }
        if (torch != null) {
            Map<String, Object> theirs = torch.run(cmd, "torch_gemm.py", "--m", m, "--n", n, "--k", k, "--threads", t,
                    "--seconds", seconds);
            double peerGflops = Peer.number(theirs, "gflops");
            err.printf("  %s: %.2f GFLOP/s; kindling / peer = %.2fx%n", theirs.get("impl"), peerGflops, gflops / peerGflops);
            err.flush();
            if (common.json) {
                Json.printLine(cmd.getOut(), theirs);
            }
        }
        return 0;
    }

    /** max |c − ref| / max |ref|: the error relative to the result's scale (NaN anywhere makes it NaN). */
    static double maxRelError(float[] c, float[] ref) {
        double maxDiff = 0;
        double maxRef = 0;
        for (int i = 0; i < ref.length; i++) {
            double d = Math.abs((double) c[i] - ref[i]);
            if (Double.isNaN(d)) {
                return Double.NaN;
            }
            maxDiff = Math.max(maxDiff, d);
            maxRef = Math.max(maxRef, Math.abs(ref[i]));
        }
        return maxRef == 0 ? maxDiff : maxDiff / maxRef;
    }

    private static float[] random(SplittableRandom rnd, int size) {
        float[] x = new float[size];
        for (int i = 0; i < size; i++) {
            x[i] = (float) (rnd.nextDouble() * 2 - 1);
        }
        return x;
    }

    /**
     * The plain loop a GEMM kernel is measured against: i-k-j order, so the inner loop streams rows of B and C
     * (which the JIT vectorizes), with rows of C split across the pool's threads.
     */
    static void plainGemm(CpuPool pool, float[] a, float[] b, float[] c, int m, int n, int k) {
        pool.parallelFor(m, 1, (i0, i1) -> {
            for (int i = i0; i < i1; i++) {
                int ci = i * n;
                java.util.Arrays.fill(c, ci, ci + n, 0f);
                for (int p = 0; p < k; p++) {
                    float aip = a[i * k + p];
                    int bp = p * n;
                    for (int j = 0; j < n; j++) {
                        c[ci + j] += aip * b[bp + j];
                    }
                }
            }
        });
    }
}
