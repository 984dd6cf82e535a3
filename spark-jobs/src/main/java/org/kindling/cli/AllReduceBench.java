package org.kindling.cli;

import java.io.IOException;
import java.io.PrintWriter;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.kindling.collective.Ring;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

@Command(name = "allreduce", mixinStandardHelpOptions = true,
        description = {"Algorithm bandwidth of the gradient ring's all-reduce (reduce-scatter + all-gather) between",
            "--workers ranks in this process over loopback TCP, as in nccl-tests: GB/s = bytes reduced per rank / time.",
            "Beside it: an in-process copy of the same bytes (System.arraycopy), measured in the same run."})
final class AllReduceBench implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--workers", description = "ranks in the ring (default ${DEFAULT-VALUE})", defaultValue = "2")
    int workers;

    @Option(names = "--mb", description = "MiB of fp32 values each rank reduces (default ${DEFAULT-VALUE})", defaultValue = "64")
    int mb;

    @Option(names = "--reps", description = "timed all-reduces, after one untimed (default ${DEFAULT-VALUE})", defaultValue = "5")
    int reps;

    @Option(names = "--json", description = "print the result as one JSON line on stdout (human-readable output goes to stderr)")
    boolean json;

    @Override
    public Integer call() throws IOException, InterruptedException, ExecutionException {
        CommandLine cmd = spec.commandLine();
        BenchOptions.requirePositive(cmd, "--workers", workers, "--mb", mb, "--reps", reps);
        if (workers < 2) {
            throw new CommandLine.ParameterException(cmd, "--workers must be at least 2 for a ring, got " + workers);
        }
        int n = (int) Math.min(Integer.MAX_VALUE - 8, (long) mb * (1 << 20) / Float.BYTES);
        long bytes = (long) n * Float.BYTES;
        List<Ring> rings = Ring.loopback(workers, Duration.ofSeconds(120));
        ExecutorService pool = Executors.newFixedThreadPool(workers);
        double seconds;
        try {
            List<float[]> data = new ArrayList<>();
            for (int r = 0; r < workers; r++) {
                float[] x = new float[n];
                java.util.Arrays.fill(x, r + 1f);
                data.add(x);
            }
            seconds = Double.MAX_VALUE;
            for (int rep = 0; rep <= reps; rep++) {
                long t0 = System.nanoTime();
                List<Future<?>> fs = new ArrayList<>();
                for (int r = 0; r < workers; r++) {
                    Ring ring = rings.get(r);
                    float[] x = data.get(r);
                    fs.add(pool.submit(() -> ring.allReduce(x, 0, n)));
                }
                for (Future<?> f : fs) {
                    f.get();
                }
                double s = (System.nanoTime() - t0) / 1e9;
                if (rep > 0) {
                    seconds = Math.min(seconds, s);
                }
            }
        } finally {
            pool.shutdownNow();
            rings.forEach(Ring::close);
        }
        float[] src = new float[n];
        float[] dst = new float[n];
        java.util.Arrays.fill(src, 1f);
        double copySeconds = Double.MAX_VALUE;
        for (int rep = 0; rep <= reps; rep++) {
            long t0 = System.nanoTime();
            System.arraycopy(src, 0, dst, 0, n);
            double s = (System.nanoTime() - t0) / 1e9;
            if (rep > 0) {
                copySeconds = Math.min(copySeconds, s);
            }
        }
        double gbps = bytes / seconds / 1e9;
        double memcpy = bytes / copySeconds / 1e9;
        PrintWriter err = cmd.getErr();
        err.printf("all-reduce of %d MiB over %d ranks (loopback TCP): %.3f s, %.2f GB/s; in-process copy %.2f GB/s%n", mb, workers,
                seconds, gbps, memcpy);
        err.flush();
        if (json) {
            Map<String, Object> row = new LinkedHashMap<>();
            row.put("bench", "allreduce");
            row.put("workers", workers);
            row.put("mb", mb);
            row.put("gbps", BenchOptions.round(gbps));
            row.put("memcpy_gbps", BenchOptions.round(memcpy));
            Json.printLine(cmd.getOut(), row);
        }
        return 0;
    }
}
