package org.kindling.cli;

import java.util.LinkedHashMap;
import java.util.Map;
import org.kindling.models.Gpt;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.train.DataParallel;
import org.kindling.models.train.Trainer;
import org.kindling.ops.Device;
import org.kindling.ops.Profiler;
import org.kindling.ops.cpu.CpuDevice;
import picocli.CommandLine;
import picocli.CommandLine.Option;

/** Options every benchmark shares, and their checks. */
final class BenchOptions {
    @CommandLine.Mixin
    DeviceOption device;

    @Option(names = "--threads", description = "CPU threads, the same as --device cpu:N (default: every core this process may use)")
    Integer threads;

    @Option(names = "--json", description = "print the result as one JSON line on stdout (human-readable output goes to stderr)")
    boolean json;

    /**
     * The device spec, checked, with {@code --threads} folded into a CPU one ({@code cpu} with
     * {@code --threads 4} is {@code cpu:4}); giving the threads both ways, or threads for another
     * device, is a usage error naming both options.
     */
    String deviceSpec(CommandLine cmd) {
        String spec = device.checked(cmd);
        if (threads == null) {
            return spec;
        }
        if (!isCpu(spec)) {
            throw new CommandLine.ParameterException(cmd, "--threads " + threads + " is for the CPU, not --device " + spec);
        }
        if (Device.argument(spec) != null) {
            throw new CommandLine.ParameterException(cmd, "--device " + spec + " and --threads " + threads
                    + " both set the CPU threads; give one of them");
        }
        requirePositive(cmd, "--threads", threads);
        return "cpu:" + threads;
    }

    /**
     * The CPU threads the benchmark runs on, checked: from --device cpu:N or --threads, else every
     * core; on another device 1, the host thread that drives it.
     */
    int threads(CommandLine cmd) {
        String spec = deviceSpec(cmd);
        if (!isCpu(spec)) {
            return 1;
        }
        return Device.argument(spec) == null ? Runtime.getRuntime().availableProcessors() : Integer.parseInt(Device.argument(spec));
    }

    /** Fails with a usage error unless the benchmark runs on the CPU, for a {@code what} that only the CPU runs. */
    void requireCpu(CommandLine cmd, String what) {
        String spec = deviceSpec(cmd);
        if (!isCpu(spec)) {
            throw new CommandLine.ParameterException(cmd, what + " runs on the CPU only, not --device " + spec);
        }
    }

    /** Opens the benchmark's device (after {@link #threads} checked it): the CPU with {@code cpuThreads} threads, else --device as given. */
    Device open(int cpuThreads) {
        return isCpu(device.spec) ? CpuDevice.open(cpuThreads) : Device.open(device.spec);
    }

    private static boolean isCpu(String spec) {
        return Device.name(spec).equals("cpu");
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

    /** {@code count} data-parallel replicas of a model, each on its own device ({@link #open}), all from {@code seed}. */
    DataParallel replicas(int count, int threadsEach, ModelConfig cfg, long seed, TrainConfig train) {
        return replicas(count, threadsEach, cfg, seed, train, null);
    }

    /** {@link #replicas}, with every device and sync counted by {@code profiler} when it is not null. */
    DataParallel replicas(int count, int threadsEach, ModelConfig cfg, long seed, TrainConfig train, Profiler profiler) {
        return new DataParallel(count, profiler, (rank, sync) -> {
            Device dev = profiler == null ? open(threadsEach) : profiler.wrap(open(threadsEach));
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
