package org.kindling.cli;

import java.io.PrintWriter;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.Callable;
import org.kindling.ops.Device;
import org.kindling.ops.Gemm;
import org.kindling.ops.Tensor;
import org.kindling.ops.cpu.CpuDevice;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

@Command(name = "gemm", mixinStandardHelpOptions = true,
        description = {"GFLOP/s of the CPU backend's fp32 GEMM (C[M,N] = A[M,K]·B[K,N]) beside a naive",
            "single-thread triple loop over the same matrices, measured in the same run."})
final class GemmBench implements Callable<Integer> {
    /** The naive loop computes only as many rows as fit this many FLOPs; its rate does not depend on M. */
    private static final double NAIVE_FLOPS = 2.0 * 1024 * 1024 * 1024;

    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--m", description = "rows of A and C (default ${DEFAULT-VALUE})", defaultValue = "1024")
    int m;

    @Option(names = "--n", description = "columns of B and C (default ${DEFAULT-VALUE})", defaultValue = "1024")
    int n;

    @Option(names = "--k", description = "columns of A, rows of B (default ${DEFAULT-VALUE})", defaultValue = "1024")
    int k;


    @Option(names = "--seconds", description = "time to spend measuring the backend (default ${DEFAULT-VALUE})",
            defaultValue = "2")
    double seconds;

    @CommandLine.Mixin
    BenchOptions common;

    @Override
    public Integer call() {
        BenchOptions.requirePositive(spec.commandLine(), "--m", m, "--n", n, "--k", k);
        int t = common.threads(spec.commandLine());
        PrintWriter err = spec.commandLine().getErr();
        SplittableRandom rnd = new SplittableRandom(42);
        float[] a = random(rnd, m * k);
        float[] b = random(rnd, k * n);
        Gemm g = Gemm.of(false, false, m, n, k);

        double best;
        float[] c;
        String impl;
        try (CpuDevice dev = Device.cpu(t);
             Tensor ta = dev.fromFloats(a, m, k);
             Tensor tb = dev.fromFloats(b, k, n);
             Tensor tc = dev.allocate(org.kindling.ops.DType.F32, m, n)) {
            impl = dev.backend().gemmImpl();
            for (int i = 0; i < 3; i++) {
                dev.backend().gemm(g, tc, ta, tb);
            }
            best = Double.MAX_VALUE;
            long deadline = System.nanoTime() + (long) (seconds * 1e9);
            int reps = 0;
            while (reps < 3 || System.nanoTime() < deadline) {
                long t0 = System.nanoTime();
                dev.backend().gemm(g, tc, ta, tb);
                best = Math.min(best, (System.nanoTime() - t0) / 1e9);
                reps++;
            }
            c = tc.toFloatArray();
        }
        double gflops = g.flops() / best / 1e9;

        int naiveRows = (int) Math.max(1, Math.min(m, NAIVE_FLOPS / (2.0 * n * k)));
        float[] naive = new float[naiveRows * n];
        long t0 = System.nanoTime();
        naiveGemm(a, b, naive, naiveRows, n, k);
        double naiveSeconds = (System.nanoTime() - t0) / 1e9;
        double naiveGflops = 2.0 * naiveRows * n * k / naiveSeconds / 1e9;
        double maxDiff = 0;
        double maxAbs = 0;
        for (int i = 0; i < naive.length; i++) {
            maxDiff = Math.max(maxDiff, Math.abs(c[i] - naive[i]));
            maxAbs = Math.max(maxAbs, Math.abs(naive[i]));
        }

        err.printf("gemm %dx%dx%d fp32, %d threads: %s %.1f GFLOP/s (best of timed runs); naive triple loop %.2f GFLOP/s"
                + " (1 thread, %d rows); speedup %.0fx; max |diff| vs naive %.1e of max |C|%n",
                m, n, k, t, impl, gflops, naiveGflops, naiveRows, gflops / naiveGflops, maxDiff / Math.max(Float.MIN_NORMAL, maxAbs));
        err.flush();
        if (common.json) {
            Map<String, Object> row = new LinkedHashMap<>();
            row.put("bench", "gemm");
            row.put("m", m);
            row.put("n", n);
            row.put("k", k);
            row.put("threads", t);
            row.put("gflops", BenchOptions.round(gflops));
            row.put("naive_gflops", BenchOptions.round(naiveGflops));
            row.put("impl", impl);
            Json.printLine(spec.commandLine().getOut(), row);
        }
        return 0;
    }

    private static float[] random(SplittableRandom rnd, int size) {
        float[] x = new float[size];
        for (int i = 0; i < size; i++) {
            x[i] = (float) (rnd.nextDouble() * 2 - 1);
        }
        return x;
    }

    /** The textbook i-j-p loop: the baseline a GEMM kernel is measured against. */
    static void naiveGemm(float[] a, float[] b, float[] c, int m, int n, int k) {
        for (int i = 0; i < m; i++) {
            for (int j = 0; j < n; j++) {
                float s = 0;
                for (int p = 0; p < k; p++) {
                    s += a[i * k + p] * b[p * n + j];
                }
                c[i * n + j] = s;
            }
        }
    }

}
