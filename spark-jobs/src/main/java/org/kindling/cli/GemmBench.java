package org.kindling.cli;

import java.io.PrintWriter;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.Callable;
import org.kindling.ops.BF16;
import org.kindling.ops.Backend;
import org.kindling.ops.Brgemm;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Gemm;
import org.kindling.ops.Tensor;
import org.kindling.ops.cpu.CpuDevice;
import org.kindling.ops.cpu.CpuPool;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

@Command(name = "gemm", mixinStandardHelpOptions = true,
        description = {"GFLOP/s of the backend's GEMM (C[M,N] = A[M,K]·B[K,N], fp32 or bf16 operands, fp32 C). On the CPU",
            "it runs beside a plain i-k-j loop over the same matrices on the same threads, both timed by the same rule",
            "(warm-up, then best and median of the timed runs) in the same run, and C is checked against the loop's. On",
            "another device the loop would take minutes at the target sizes: C is checked against the host BLAS instead",
            "(over the operands as the device holds them), and the same-run baseline is the PyTorch peer (--peer torch).",
            "A max relative error above 1e-4 fails. With --brgemm COUNT it instead times one batch-reduce GEMM",
            "C = Σᵢ Aᵢ·Bᵢ over COUNT pairs of M×K and K×N matrices beside one big GEMM over the concatenated reduction",
            "(K·COUNT, the same FLOPs) and COUNT separate GEMM calls accumulating into C, same run, same rule."})
final class GemmBench implements Callable<Integer> {
    /** Largest max|C − C_ref| / max|C_ref| accepted: fp32 sums of K products differ by rounding only. */
    static final double MAX_REL_ERROR = 1e-4;
    /** How long one timed GEMM may take on an asynchronous device before the bench gives up on it. */

    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--m", description = "rows of A and C (default ${DEFAULT-VALUE})", defaultValue = "1024")
    int m;

    @Option(names = "--n", description = "columns of B and C (default ${DEFAULT-VALUE})", defaultValue = "1024")
    int n;

    @Option(names = "--k", description = "columns of A, rows of B (default ${DEFAULT-VALUE})", defaultValue = "1024")
    int k;

    @Option(names = "--dtype", description = "operand precision, fp32 or bf16 (bf16 A and B, fp32 accumulation and C; not on "
            + "the CPU, whose GEMM is fp32 only) (default ${DEFAULT-VALUE})", defaultValue = "fp32")
    String dtype;

    @Option(names = "--seconds", description = "least timed work for each side, after 2 warm-up runs and with at least 3 "
            + "timed runs (default ${DEFAULT-VALUE})", defaultValue = "2")
    double seconds;

    @Option(names = "--peer", description = "also run peers/torch_gemm.py (PyTorch on the same device, threads and dtype) in "
            + "the same run: torch")
    String peer;

    @Option(names = "--python", description = "the Python for --peer (default: $KINDLING_PYTHON, else python3)")
    String python;

    @Option(names = "--brgemm", description = "time a batch-reduce GEMM of this many (M×K, K×N) pairs against one big "
            + "GEMM (K·COUNT) and COUNT separate calls instead (at least 1)")
    Integer brgemm;

    @CommandLine.Mixin
    BenchOptions common;

    @Override
    public Integer call() throws Exception {
        CommandLine cmd = spec.commandLine();
        BenchOptions.requirePositive(cmd, "--m", m, "--n", n, "--k", k);
        if (!(seconds >= 0)) {
            throw new CommandLine.ParameterException(cmd, "--seconds must be 0 or more, got " + seconds);
        }
        if (!dtype.equals("fp32") && !dtype.equals("bf16")) {
            throw new CommandLine.ParameterException(cmd, "--dtype must be fp32 or bf16, got " + dtype);
        }
        DType operands = dtype.equals("bf16") ? DType.BF16 : DType.F32;
        if (brgemm != null) {
            if (brgemm < 1) {
                throw new CommandLine.ParameterException(cmd, "--brgemm must be at least 1 pair, got " + brgemm);
            }
            if (peer != null || operands != DType.F32) {
                throw new CommandLine.ParameterException(cmd, "--brgemm compares Kindling's own kernels in fp32; it takes "
                        + "neither --peer nor --dtype bf16");
            }
            return batchReduce(cmd);
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
        Device.Kind kind;
        int ordinal;
        try (Device dev = common.open(t)) {
            kind = dev.kind();
            ordinal = dev.ordinal();
            if (operands == DType.BF16 && kind == Device.Kind.CPU) {
                throw new CommandLine.ParameterException(cmd, "--dtype bf16 benchmarks a device with a bf16 GEMM (cuda); "
                        + "the CPU widens bf16 operands to fp32 and runs its fp32 GEMM, which --dtype fp32 measures");
            }
            impl = dev.backend().gemmImpl();
            c = new float[m * n];
            fast = time(dev, g, operands, a, b, c, rule);
        }
        boolean onCpu = kind == Device.Kind.CPU;
        float[] ref = new float[m * n];
        Timing.Stats loop = null;
        String refName;
        if (onCpu) {
            try (CpuPool pool = new CpuPool(t)) {
                loop = Timing.measure(rule, () -> plainGemm(pool, a, b, ref, m, n, k));
            }
            refName = "C_loop";
        } else {
            refName = "C_host";
            hostGemm(g, operands, a, b, ref, err);
        }
        double relError = maxRelError(c, ref);
        double gflops = fast.bestRate(g.flops()) / 1e9;
        Double loopGflops = loop == null ? null : BenchOptions.round(loop.bestRate(g.flops()) / 1e9);

        err.printf("gemm %dx%dx%d %s, %d threads, best (median) of the timed runs:%n", m, n, k, dtype, t);
        err.printf("  %s: %.2f (%.2f) GFLOP/s over %d runs%n", impl, gflops, fast.medianRate(g.flops()) / 1e9, fast.reps());
        if (loop != null) {
            err.printf("  plain i-k-j loop: %.2f (%.2f) GFLOP/s over %d runs; the backend is %.1fx faster%n", loop.bestRate(g.flops()) / 1e9,
                    loop.medianRate(g.flops()) / 1e9, loop.reps(), gflops / (loop.bestRate(g.flops()) / 1e9));
        } else {
            err.printf("  no plain-loop baseline off the CPU (minutes at the target sizes); on a GPU the same-run baseline is "
                    + "the torch/cuBLAS peer: --peer torch%n");
        }
        err.printf("  max |C - %s| / max |%s| = %.1e (limit %.0e)%n", refName, refName, relError, MAX_REL_ERROR);
        err.flush();
        if (common.json) {
            Map<String, Object> row = new LinkedHashMap<>();
            row.put("bench", "gemm");
            row.put("m", m);
            row.put("n", n);
            row.put("k", k);
            row.put("threads", t);
            row.put("gflops", BenchOptions.round(gflops));
            row.put("naive_gflops", loopGflops);
            row.put("impl", operands == DType.F32 ? impl : impl + " " + dtype);
            row.put("median_gflops", BenchOptions.round(fast.medianRate(g.flops()) / 1e9));
            row.put("naive_median_gflops", loop == null ? null : BenchOptions.round(loop.medianRate(g.flops()) / 1e9));
            row.put("max_rel_error", relError);
            Json.printLine(cmd.getOut(), row);
        }
        if (!(relError <= MAX_REL_ERROR)) {
            throw new IllegalStateException(String.format("the %s GEMM is wrong: max relative error %.3e against %s "
                    + "exceeds %.0e", impl, relError, onCpu ? "the plain loop" : "the host BLAS", MAX_REL_ERROR));
        }
        if (torch != null) {
            Map<String, Object> theirs = kind == Device.Kind.CUDA
                    ? torch.run(cmd, "torch_gemm.py", "--m", m, "--n", n, "--k", k, "--threads", t, "--seconds", seconds,
                            "--device", "cuda:" + ordinal, "--dtype", dtype)
                    : torch.run(cmd, "torch_gemm.py", "--m", m, "--n", n, "--k", k, "--threads", t, "--seconds", seconds);
            double peerGflops = Peer.number(theirs, "gflops");
            err.printf("  %s: %.2f GFLOP/s; kindling / peer = %.2fx%n", theirs.get("impl"), peerGflops, gflops / peerGflops);
            err.flush();
            if (common.json) {
                Json.printLine(cmd.getOut(), theirs);
            }
        }
        return 0;
    }

    /**
     * The batch-reduce comparison: A' [M, COUNT·K] and B' [COUNT·K, N] hold the pairs (Aᵢ = columns
     * i·K… of A', addressed by stride with leading dimension COUNT·K; Bᵢ = rows i·K… of B'), so the
     * big GEMM A'·B' is the same sum in one product and every side's C is checked against it.
     */
    private int batchReduce(CommandLine cmd) throws Exception {
        int count = brgemm;
        int kk = Math.multiplyExact(count, k);
        int t = common.threads(cmd);
        PrintWriter err = cmd.getErr();
        SplittableRandom rnd = new SplittableRandom(42);
        float[] a = random(rnd, Math.multiplyExact(m, kk));
        float[] b = random(rnd, Math.multiplyExact(kk, n));
        Gemm big = Gemm.of(false, false, m, n, kk);
        Gemm pair = Gemm.of(false, false, m, n, k).leading(kk, n, n);
        Timing.Rule rule = new Timing.Rule(2, 3, seconds);
        String impl;
        Timing.Stats bigStats;
        Timing.Stats brStats;
        Timing.Stats sepStats;
        float[] bigC;
        float[] brC;
        float[] sepC;
        try (Device dev = common.open(t);
             Tensor ta = dev.allocate(DType.F32, m, kk).copyFrom(a);
             Tensor tb = dev.allocate(DType.F32, kk, n).copyFrom(b);
             Tensor tc = dev.allocate(DType.F32, m, n)) {
            Backend be = dev.backend();
            impl = be.gemmImpl();
            List<Tensor> as = Brgemm.strided(ta, count, k, pair.spanA());
            List<Tensor> bs = Brgemm.strided(tb, count, (long) k * n, pair.spanB());
            Gemm rest = pair.scaled(1f, 1f);
            bigStats = Timing.measure(rule, () -> {
                be.gemm(big, tc, ta, tb);
                Timing.finish(dev, "the big GEMM");
            });
            bigC = tc.toFloatArray();
            brStats = Timing.measure(rule, () -> {
                be.brgemm(pair, tc, as, bs);
                Timing.finish(dev, "the batch-reduce GEMM");
            });
            brC = tc.toFloatArray();
            sepStats = Timing.measure(rule, () -> {
                be.gemm(pair, tc, as.get(0), bs.get(0));
                for (int i = 1; i < count; i++) {
                    be.gemm(rest, tc, as.get(i), bs.get(i));
                }
                Timing.finish(dev, "the separate GEMMs");
            });
            sepC = tc.toFloatArray();
        }
        double relError = Math.max(maxRelError(brC, bigC), maxRelError(sepC, bigC));
        double flops = big.flops();
        double brG = brStats.bestRate(flops) / 1e9;
        double bigG = bigStats.bestRate(flops) / 1e9;
        double sepG = sepStats.bestRate(flops) / 1e9;
        err.printf("brgemm of %d pairs %dx%dx%d (one big GEMM %dx%dx%d), %s, %d threads, best (median) GFLOP/s:%n",
                count, m, n, k, m, n, kk, impl, t);
        err.printf("  brgemm: %.2f (%.2f); one big GEMM: %.2f (%.2f); %d separate GEMMs: %.2f (%.2f)%n", brG,
                brStats.medianRate(flops) / 1e9, bigG, bigStats.medianRate(flops) / 1e9, count, sepG,
                sepStats.medianRate(flops) / 1e9);
        err.printf("  brgemm / big GEMM = %.2f, brgemm / separate = %.2f; max |C - C_big| / max |C_big| = %.1e (limit %.0e)%n",
                brG / bigG, brG / sepG, relError, MAX_REL_ERROR);
        err.flush();
        if (common.json) {
            Map<String, Object> row = new LinkedHashMap<>();
            row.put("bench", "gemm_brgemm");
            row.put("m", m);
            row.put("n", n);
            row.put("k", k);
            row.put("count", count);
            row.put("threads", t);
            row.put("impl", impl);
            row.put("brgemm_gflops", BenchOptions.round(brG));
            row.put("big_gemm_gflops", BenchOptions.round(bigG));
            row.put("separate_gflops", BenchOptions.round(sepG));
            row.put("max_rel_error", relError);
            Json.printLine(cmd.getOut(), row);
        }
        if (!(relError <= MAX_REL_ERROR)) {
            throw new IllegalStateException(String.format("the batch-reduce or separate GEMMs disagree with the big GEMM: "
                    + "max relative error %.3e exceeds %.0e", relError, MAX_REL_ERROR));
        }
        return 0;
    }

    /** Times {@code g} on {@code dev} over operands {@code a} and {@code b} held as {@code operands}, leaving the product in {@code c}. */
    static Timing.Stats time(Device dev, Gemm g, DType operands, float[] a, float[] b, float[] c, Timing.Rule rule) throws Exception {
        String name = dev.backend().gemmImpl();
        try (Tensor ta = dev.allocate(operands, g.m(), g.k()).copyFrom(a);
             Tensor tb = dev.allocate(operands, g.k(), g.n()).copyFrom(b);
             Tensor tc = dev.allocate(DType.F32, g.m(), g.n())) {
            Timing.Stats stats = Timing.measure(rule, () -> {
                dev.backend().gemm(g, tc, ta, tb);
                Timing.finish(dev, "the " + name + " GEMM");
            });
            System.arraycopy(tc.toFloatArray(), 0, c, 0, c.length);
            return stats;
        }
    }

    /**
     * The reference C off the CPU: the host BLAS on every core over the operands as the device holds them
     * (rounded to bf16 for bf16), so only the order of the fp32 sums differs.
     */
    private static void hostGemm(Gemm g, DType operands, float[] a, float[] b, float[] out, PrintWriter err) {
        try (Device host = CpuDevice.open();
             Tensor ha = host.fromFloats(operands == DType.BF16 ? bf16(a) : a, g.m(), g.k());
             Tensor hb = host.fromFloats(operands == DType.BF16 ? bf16(b) : b, g.k(), g.n());
             Tensor hc = host.allocate(DType.F32, g.m(), g.n())) {
            err.printf("checking C against the host BLAS (%s, %d threads)...%n", host.backend().gemmImpl(), host.threads());
            err.flush();
            host.backend().gemm(g, hc, ha, hb);
            System.arraycopy(hc.toFloatArray(), 0, out, 0, out.length);
        }
    }

    private static float[] bf16(float[] x) {
        float[] r = new float[x.length];
        for (int i = 0; i < x.length; i++) {
            r[i] = BF16.toFloat(BF16.fromFloat(x[i]));
        }
        return r;
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
