package org.kindling.cli;

import java.io.PrintWriter;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.Callable;
import org.kindling.ops.Attention;
import org.kindling.ops.Backend;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Gemm;
import org.kindling.ops.NaiveAttention;
import org.kindling.ops.Skein;
import org.kindling.ops.Tensor;
import org.kindling.ops.Varlen;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

@Command(name = "attention", mixinStandardHelpOptions = true,
        description = {"FlashAttention forward and forward+backward beside naive attention (materialized fp32 scores,",
            "the same backend's GEMM and softmax, buffers allocated by its warm-up run and reused) in the same run, both timed",
            "by the same rule (one warm-up run, then --reps timed runs: best and median), with the peak extra memory of each:",
            "bytes allocated beyond inputs, outputs and gradients. The naive path is skipped when it would not fit.",
            "--impl flash,skein also times Skeinformer's sketched attention on the same operands in the same run."})
final class AttentionBench implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--seq", description = "tokens per sequence N (default ${DEFAULT-VALUE})", defaultValue = "4096")
    int seq;

    @Option(names = "--heads", description = "attention heads H (default ${DEFAULT-VALUE})", defaultValue = "4")
    int heads;

    @Option(names = "--head-dim", description = "head dimension D (default ${DEFAULT-VALUE})", defaultValue = "64")
    int headDim;

    @Option(names = "--batch", description = "sequences B (default ${DEFAULT-VALUE})", defaultValue = "1")
    int batch;

    @Option(names = "--causal", negatable = true, defaultValue = "true", fallbackValue = "true",
            description = "causal masking (default on; --no-causal turns it off)")
    boolean causal;

    @Option(names = "--impl", split = ",", defaultValue = "flash",
            description = "implementations: flash (always measured, the baseline), skein (sketched attention) (default ${DEFAULT-VALUE})")
    java.util.List<String> impls;

    @Option(names = "--samples", description = "skein: columns sampled per head (default ${DEFAULT-VALUE}, the skein mixer's)",
            defaultValue = "64")
    int samples;

    @Option(names = "--pilot", description = "skein: pilot query rows per head, without causal masking (default: --samples)")
    Integer pilot;

    @Option(names = "--reps", description = "timed repetitions after one warm-up; the best is reported (default ${DEFAULT-VALUE})",
            defaultValue = "3")
    int reps;

    @Option(names = "--peer", description = "also run peers/torch_attention.py (PyTorch, materialized scores, autograd) on the "
            + "same shapes and threads in the same run: torch")
    String peer;

    @Option(names = "--python", description = "the Python for --peer (default: $KINDLING_PYTHON, else python3)")
    String python;

    @CommandLine.Mixin
    BenchOptions common;

    private static final class Operands implements AutoCloseable {
        final Tensor q;
        final Tensor k;
        final Tensor v;
        final Tensor dout;
        final Tensor out;
        final Tensor lse;
        final Tensor dq;
        final Tensor dk;
        final Tensor dv;
        final Varlen cu;

        Operands(Device dev, int batch, int seq, int heads, int headDim) {
            int rows = batch * seq;
            SplittableRandom r = new SplittableRandom(7);
            q = random(dev, r, rows, heads, headDim);
            k = random(dev, r, rows, heads, headDim);
            v = random(dev, r, rows, heads, headDim);
            dout = random(dev, r, rows, heads, headDim);
            out = dev.allocate(DType.F32, rows, heads, headDim);
            lse = dev.allocate(DType.F32, heads, rows);
            dq = dev.allocate(DType.F32, rows, heads, headDim);
            dk = dev.allocate(DType.F32, rows, heads, headDim);
            dv = dev.allocate(DType.F32, rows, heads, headDim);
            int[] offsets = new int[batch + 1];
            for (int b = 0; b <= batch; b++) {
                offsets[b] = b * seq;
            }
            cu = Varlen.upload(dev, offsets);
        }

        private static Tensor random(Device dev, SplittableRandom r, int... shape) {
            return dev.fromFloats(BenchOptions.uniform(r, Tensor.numel(shape)), shape);
        }

        @Override
        public void close() {
            for (Tensor t : new Tensor[] {q, k, v, dout, out, lse, dq, dk, dv, cu.device()}) {
                t.close();
            }
        }
    }

    /** Best and median milliseconds of the timed runs, and the peak bytes allocated beyond those live before the warm-up. */
    private record Measured(double ms, double medianMs, long extraBytes) {
    }

    private Measured time(Device dev, long base, Timing.Trial body) throws Exception {
        Timing.Stats s = Timing.measure(new Timing.Rule(1, reps, 0), new Timing.Trial() {
            @Override
            public void before() throws Exception {
                body.before();
            }

            @Override
            public void run() throws Exception {
                body.run();
                Timing.finish(dev, "attention");
            }

            @Override
            public void after() throws Exception {
                body.after();
            }
        });
        return new Measured(s.best() * 1e3, s.median() * 1e3, dev.peakBytes() - base);
    }

    @Override
    public Integer call() throws Exception {
        BenchOptions.requirePositive(spec.commandLine(), "--seq", seq, "--heads", heads, "--head-dim", headDim, "--batch", batch,
                "--reps", reps);
        int t = common.threads(spec.commandLine());
        Attention a;
        try {
            a = Attention.of(heads, heads, headDim).withCausal(causal);
        } catch (IllegalArgumentException e) {
            throw new CommandLine.ParameterException(spec.commandLine(), e.getMessage());
        }
        for (String impl : impls) {
            if (!impl.equals("flash") && !impl.equals("skein")) {
                throw new CommandLine.ParameterException(spec.commandLine(), "--impl " + impl + " is unknown; known: flash, skein");
            }
        }
        BenchOptions.requirePositive(spec.commandLine(), "--samples", samples);
        if (pilot != null && (causal || pilot < 0)) {
            throw new CommandLine.ParameterException(spec.commandLine(), causal ? "--pilot applies only with --no-causal"
                    : "--pilot must be at least 0, got " + pilot);
        }
        Skein sk = impls.contains("skein") ? new Skein(heads, headDim, samples, causal ? 0 : pilot == null ? samples : pilot,
                causal, true) : null;
        Measured skFwd = null;
        Measured skFwdBwd = null;
        Peer torch = Peer.parse(spec.commandLine(), peer, python);
        PrintWriter err = spec.commandLine().getErr();
        double flopsFwd = 4.0 * batch * heads * (double) seq * seq * headDim / (causal ? 2 : 1);
        double flopsFwdBwd = 3.5 * flopsFwd;
        Measured fwd;
        Measured fwdBwd;
        Measured naiveFwd = null;
        Measured naiveFwdBwd = null;
        double gemmGflops;
        try (Device dev = common.open(t); Operands o = new Operands(dev, batch, seq, heads, headDim)) {
            Backend be = dev.backend();
            long base = dev.liveBytes();
            dev.resetPeak();
            fwd = time(dev, base, () -> be.attentionForward(o.out, o.lse, o.q, o.k, o.v, o.cu, o.cu, a));
            fwdBwd = time(dev, base, () -> {
                be.attentionForward(o.out, o.lse, o.q, o.k, o.v, o.cu, o.cu, a);
                be.attentionBackward(o.dq, o.dk, o.dv, o.dout, o.q, o.k, o.v, o.out, o.lse, o.cu, o.cu, a);
            });
            if (sk != null) {
                long skBase = dev.liveBytes();
                dev.resetPeak();
                skFwd = time(dev, skBase, () -> be.skeinForward(o.out, o.q, o.k, o.v, o.cu, sk, 1));
                skFwdBwd = time(dev, skBase, () -> {
                    be.skeinForward(o.out, o.q, o.k, o.v, o.cu, sk, 1);
                    be.skeinBackward(o.dq, o.dk, o.dv, o.dout, o.q, o.k, o.v, o.cu, sk, 1);
                });
            }
            // The naive path holds P for every head, plus dP and dS for one head at a time.
            long naiveBytes = ((long) batch * heads + 2) * seq * seq * 4L;
            long headroom = Runtime.getRuntime().maxMemory() - (Runtime.getRuntime().totalMemory() - Runtime.getRuntime().freeMemory());
            if (naiveBytes < headroom / 2) {
                // The flash kernels' scratch stays pooled on the device: the naive path's extra bytes count from here.
                long naiveBase = dev.liveBytes();
                dev.resetPeak();
                try (NaiveAttention naive = new NaiveAttention(dev, a)) {
                    naiveFwd = time(dev, naiveBase, () -> naive.forward(o.out, o.q, o.k, o.v, o.cu, o.cu));
                    naiveFwdBwd = time(dev, naiveBase, () -> {
                        naive.forward(o.out, o.q, o.k, o.v, o.cu, o.cu);
                        naive.backward(o.dq, o.dk, o.dv, o.dout, o.q, o.k, o.v);
                    });
                }
            } else {
                err.printf("naive attention skipped: it needs about %d MB, %d MB of heap are free%n",
                        naiveBytes >> 20, headroom >> 20);
            }
            gemmGflops = gemmRate(dev);
        }
        double gflops = flopsFwdBwd / (fwdBwd.ms() / 1e3) / 1e9;
        err.printf("attention B=%d H=%d N=%d D=%d %s, %d threads%n", batch, heads, seq, headDim, causal ? "causal" : "non-causal", t);
        err.printf("  best (median) of %d runs after one warm-up%n", reps);
        err.printf("  flash: fwd %.1f (%.1f) ms, fwd+bwd %.1f (%.1f) ms = %.1f GFLOP/s (%.0f%% of the %.1f GFLOP/s 1024^3 GEMM), "
                + "extra memory %s%n", fwd.ms(), fwd.medianMs(), fwdBwd.ms(), fwdBwd.medianMs(), gflops, 100 * gflops / gemmGflops,
                gemmGflops, BenchOptions.mib(fwdBwd.extraBytes()));
        if (naiveFwdBwd != null) {
            err.printf("  naive: fwd %.1f (%.1f) ms, fwd+bwd %.1f (%.1f) ms, extra memory %s; flash is %.1fx faster fwd+bwd%n",
                    naiveFwd.ms(), naiveFwd.medianMs(), naiveFwdBwd.ms(), naiveFwdBwd.medianMs(), BenchOptions.mib(naiveFwdBwd.extraBytes()),
                    naiveFwdBwd.ms() / fwdBwd.ms());
        }
        if (skFwdBwd != null) {
            err.printf("  skein (%d samples, %d pilot rows): fwd %.1f (%.1f) ms, fwd+bwd %.1f (%.1f) ms, extra memory %s; "
                    + "%.1fx faster than flash fwd+bwd%n", sk.samples(), sk.pilot(), skFwd.ms(), skFwd.medianMs(), skFwdBwd.ms(),
                    skFwdBwd.medianMs(), BenchOptions.mib(skFwdBwd.extraBytes()), fwdBwd.ms() / skFwdBwd.ms());
        }
        err.flush();
        if (common.json) {
            Map<String, Object> row = new LinkedHashMap<>();
            row.put("bench", "attention");
            row.put("seq", seq);
            row.put("heads", heads);
            row.put("head_dim", headDim);
            row.put("causal", causal);
            row.put("fwd_ms", BenchOptions.round(fwd.ms()));
            row.put("fwd_bwd_ms", BenchOptions.round(fwdBwd.ms()));
            row.put("naive_fwd_ms", naiveFwd == null ? null : BenchOptions.round(naiveFwd.ms()));
            row.put("naive_fwd_bwd_ms", naiveFwdBwd == null ? null : BenchOptions.round(naiveFwdBwd.ms()));
            row.put("gflops_fwd_bwd", BenchOptions.round(gflops));
            row.put("extra_bytes", fwdBwd.extraBytes());
            row.put("naive_extra_bytes", naiveFwdBwd == null ? null : naiveFwdBwd.extraBytes());
            row.put("fwd_median_ms", BenchOptions.round(fwd.medianMs()));
            row.put("fwd_bwd_median_ms", BenchOptions.round(fwdBwd.medianMs()));
            row.put("naive_fwd_median_ms", naiveFwd == null ? null : BenchOptions.round(naiveFwd.medianMs()));
            row.put("naive_fwd_bwd_median_ms", naiveFwdBwd == null ? null : BenchOptions.round(naiveFwdBwd.medianMs()));
            row.put("impl", "kindling");
            Json.printLine(spec.commandLine().getOut(), row);
            if (skFwdBwd != null) {
                Map<String, Object> sr = new LinkedHashMap<>();
                sr.put("bench", "attention");
                sr.put("seq", seq);
                sr.put("heads", heads);
                sr.put("head_dim", headDim);
                sr.put("causal", causal);
                sr.put("samples", sk.samples());
                sr.put("pilot", sk.pilot());
                sr.put("fwd_ms", BenchOptions.round(skFwd.ms()));
                sr.put("fwd_bwd_ms", BenchOptions.round(skFwdBwd.ms()));
                sr.put("fwd_median_ms", BenchOptions.round(skFwd.medianMs()));
                sr.put("fwd_bwd_median_ms", BenchOptions.round(skFwdBwd.medianMs()));
                sr.put("extra_bytes", skFwdBwd.extraBytes());
                sr.put("speedup_fwd_bwd", BenchOptions.round(fwdBwd.ms() / skFwdBwd.ms()));
                sr.put("impl", "skein");
                Json.printLine(spec.commandLine().getOut(), sr);
            }
        }
        if (torch != null) {
            Map<String, Object> theirs = torch.run(spec.commandLine(), "torch_attention.py", "--seq", seq, "--heads", heads,
                    "--head-dim", headDim, "--batch", batch, causal ? "--causal" : "--no-causal", "--threads", t, "--reps", reps);
            double peerMs = Peer.number(theirs, "fwd_bwd_ms");
            err.printf("  %s: fwd+bwd %.1f ms; kindling flash is %.2fx faster fwd+bwd%n", theirs.get("impl"), peerMs,
                    peerMs / fwdBwd.ms());
            err.flush();
            if (common.json) {
                Json.printLine(spec.commandLine().getOut(), theirs);
            }
        }
        return 0;
    }

    /** The backend's GEMM rate at 1024³ in this run, the yardstick the fused kernel is judged by. */
    private static double gemmRate(Device dev) throws Exception {
        int n = 1024;
        try (Tensor a = dev.allocate(DType.F32, n, n); Tensor b = dev.allocate(DType.F32, n, n); Tensor c = dev.allocate(DType.F32, n, n)) {
            Gemm g = Gemm.of(false, false, n, n, n);
            return Timing.measure(new Timing.Rule(1, 10, 0), () -> {
                dev.backend().gemm(g, c, a, b);
                Timing.finish(dev, "the GEMM");
            }).bestRate(g.flops()) / 1e9;
        }
    }
}
