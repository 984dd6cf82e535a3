package org.kindling.cli;

import java.util.LinkedHashMap;
import java.util.Map;
import org.kindling.models.Gpt;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.train.DataParallel;
import org.kindling.models.train.Trainer;
import org.kindling.ops.Device;
import org.kindling.ops.cpu.CpuDevice;
import picocli.CommandLine;
import picocli.CommandLine.Option;

/** Options every benchmark shares, and their checks. */
final class BenchOptions {
    @Option(names = "--threads", description = "CPU threads (default: every core this process may use)")
    Integer threads;

    @Option(names = "--json", description = "print the result as one JSON line on stdout (human-readable output goes to stderr)")
    boolean json;

    /** The thread count to run on, checked. */
    int threads(CommandLine cmd) {
        int t = threads == null ? Runtime.getRuntime().availableProcessors() : threads;
        requirePositive(cmd, "--threads", t);
        return t;
    }

    /** Fails with a usage error naming the first option whose value is below 1. */
    static void requirePositive(CommandLine cmd, Object... nameValuePairs) {
        Map<String, Integer> values = new LinkedHashMap<>();
        for (int i = 0; i < nameValuePairs.length; i += 2) {
            values.put((String) nameValuePairs[i], (Integer) nameValuePairs[i + 1]);
        }
        values.forEach((name, value) -> {
            if (value < 1) {
                throw new CommandLine.ParameterException(cmd, name + " must be at least 1, got " + value);
            }
        });
    }

    /** Replicas for a CPU benchmark: one per thread when {@code batch} divides evenly (or {@code requested}), checked. */
    static int replicas(CommandLine cmd, Integer requested, int batch, int threads) {
        int reps = requested != null ? requested : batch % threads == 0 ? threads : 1;
        if (reps < 1 || batch % reps != 0 || threads % reps != 0) {
            throw new CommandLine.ParameterException(cmd, "--replicas " + reps + " must divide both the batch " + batch
                    + " and the " + threads + " threads");
        }
        return reps;
    }

    /** {@code count} data-parallel replicas of a model on CPU devices of {@code threadsEach} threads, all from {@code seed}. */
    static DataParallel cpuReplicas(int count, int threadsEach, ModelConfig cfg, long seed, TrainConfig train) {
        return new DataParallel(count, (rank, sync) -> {
            CpuDevice dev = Device.cpu(threadsEach);
            Gpt model = new Gpt(cfg, dev, seed);
            return new DataParallel.Replica(dev, model, new Trainer(model, train, sync));
        });
    }

    /** {@code n} values drawn uniformly from [-1, 1): benchmark inputs. */
    static float[] uniform(java.util.SplittableRandom r, int n) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) {
            v[i] = (float) (r.nextDouble() * 2 - 1);
        }
        return v;
    }

    static String mib(long bytes) {
        return String.format("%.2f MiB", bytes / 1048576.0);
    }

    static double round(double v) {
        return Math.round(v * 100) / 100.0;
    }
}
