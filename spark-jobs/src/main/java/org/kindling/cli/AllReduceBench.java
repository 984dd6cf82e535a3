package org.kindling.cli;

import java.io.PrintWriter;
import java.nio.ByteBuffer;
import java.nio.FloatBuffer;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.kindling.collective.Ring;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

@Command(name = "allreduce", mixinStandardHelpOptions = true,
        description = {"Bandwidth of the gradient ring's all-reduce (reduce-scatter + all-gather) between --workers ranks in this",
            "process over loopback TCP, as nccl-tests reports it: algorithm bandwidth = bytes reduced per rank / time, bus",
            "bandwidth = algorithm bandwidth x 2(n-1)/n. Every run's sums are checked on every rank; a wrong value fails.",
            "Beside it: an in-process copy of the same bytes (System.arraycopy). Both timed by the same rule (one warm-up",
            "run, then --reps timed runs: best and median)."})
final class AllReduceBench implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--workers", description = "ranks in the ring (default ${DEFAULT-VALUE})", defaultValue = "2")
    int workers;

    @Option(names = "--mb", description = "MiB of fp32 values each rank reduces (default ${DEFAULT-VALUE})", defaultValue = "64")
    int mb;

    @Option(names = "--reps", description = "timed all-reduces, after one untimed (default ${DEFAULT-VALUE})", defaultValue = "5")
    int reps;

    @Option(names = "--peer", description = "also all-reduce the same bytes with PyTorch's Gloo backend over loopback "
            + "(peers/torch_allreduce_gloo.py, one process per rank) in the same run: torch")
    String peer;

    @Option(names = "--python", description = "the Python for --peer (default: $KINDLING_PYTHON, else python3)")
    String python;

    @Option(names = "--json", description = "print the result as one JSON line on stdout (human-readable output goes to stderr)")
    boolean json;

    /** Rank r's input: small integers, so that every sum is exact in fp32 and a misplaced or dropped block shows. */
    static float input(int rank, int i) {
        return rank + 1 + i % 7;
    }

    /** The all-reduced value of element i over {@code world} ranks. */
    static float expected(int world, int i) {
        return world * (world + 1) / 2f + world * (float) (i % 7);
    }

    @Override
    public Integer call() throws Exception {
        CommandLine cmd = spec.commandLine();
        BenchOptions.requirePositive(cmd, "--workers", workers, "--mb", mb, "--reps", reps);
        if (workers < 2) {
            throw new CommandLine.ParameterException(cmd, "--workers must be at least 2 for a ring, got " + workers);
        }
        Peer torch = Peer.parse(cmd, peer, python);
        int n = (int) Math.min(Integer.MAX_VALUE - 8, (long) mb * (1 << 20) / Float.BYTES);
        long bytes = (long) n * Float.BYTES;
        Timing.Rule rule = new Timing.Rule(1, reps, 0);
        List<Ring> rings = Ring.loopback(workers, Duration.ofSeconds(120));
        ExecutorService pool = Executors.newFixedThreadPool(workers);
        Timing.Stats ring;
        try {
            // Direct buffers, as training's gradient buckets: the ring sends and receives them without a copy.
            List<ByteBuffer> data = new ArrayList<>();
            List<float[]> results = new ArrayList<>();
            for (int r = 0; r < workers; r++) {
                data.add(Ring.allocateFloats(n));
                results.add(new float[n]);
            }
            ring = Timing.measure(rule, new Timing.Trial() {
                @Override
                public void before() {
                    for (int r = 0; r < workers; r++) {
                        FloatBuffer x = data.get(r).asFloatBuffer();
                        for (int i = 0; i < n; i++) {
                            x.put(i, input(r, i));
                        }
                    }
                }

                @Override
                public void run() throws Exception {
                    List<Future<?>> fs = new ArrayList<>();
                    for (int r = 0; r < workers; r++) {
                        Ring rr = rings.get(r);
                        ByteBuffer x = data.get(r);
                        fs.add(pool.submit(() -> rr.allReduce(x, 0, n)));
                    }
                    for (Future<?> f : fs) {
                        f.get(10, TimeUnit.MINUTES);
                    }
                }

                @Override
                public void after() {
                    for (int r = 0; r < workers; r++) {
                        data.get(r).asFloatBuffer().get(0, results.get(r), 0, n);
                    }
                    check(results, n);
                }
            });
        } finally {
            pool.shutdownNow();
            rings.forEach(Ring::close);
        }
        float[] src = new float[n];
        float[] dst = new float[n];
        java.util.Arrays.fill(src, 1f);
        Timing.Stats copy = Timing.measure(rule, () -> System.arraycopy(src, 0, dst, 0, n));
        double gbps = ring.bestRate(bytes) / 1e9;
        double busbw = gbps * 2 * (workers - 1) / workers;
        double memcpy = copy.bestRate(bytes) / 1e9;
        PrintWriter err = cmd.getErr();
        err.printf("all-reduce of %d MiB over %d ranks (loopback TCP), sums checked: best %.3f s (median %.3f) of %d runs: "
                + "algbw %.2f GB/s, busbw %.2f GB/s; in-process copy %.2f GB/s%n", mb, workers, ring.best(), ring.median(),
                ring.reps(), gbps, busbw, memcpy);
        err.flush();
        if (json) {
            Map<String, Object> row = new LinkedHashMap<>();
            row.put("bench", "allreduce");
            row.put("workers", workers);
            row.put("mb", mb);
            row.put("gbps", BenchOptions.round(gbps));
            row.put("memcpy_gbps", BenchOptions.round(memcpy));
            row.put("busbw_gbps", BenchOptions.round(busbw));
            row.put("median_gbps", BenchOptions.round(ring.medianRate(bytes) / 1e9));
            row.put("impl", "kindling");
            Json.printLine(cmd.getOut(), row);
        }
        if (torch != null) {
            Map<String, Object> theirs = torch.run(cmd, "torch_allreduce_gloo.py", "--workers", workers, "--mb", mb, "--reps", reps);
            double peerGbps = Peer.number(theirs, "gbps");
            err.printf("  %s: algbw %.2f GB/s; kindling / peer = %.2fx%n", theirs.get("impl"), peerGbps, gbps / peerGbps);
            err.flush();
            if (json) {
                Json.printLine(cmd.getOut(), theirs);
            }
        }
        return 0;
    }

    /** Fails naming the first rank and element whose all-reduced value is not the exact sum. */
    static void check(List<float[]> data, int n) {
        int world = data.size();
        for (int r = 0; r < world; r++) {
            float[] x = data.get(r);
            for (int i = 0; i < n; i++) {
                float want = expected(world, i);
                if (x[i] != want) {
                    throw new IllegalStateException("the all-reduce is wrong: rank " + r + " holds " + x[i] + " at element " + i
                            + " of " + n + ", the sum over " + world + " ranks is " + want);
                }
            }
        }
    }
}
