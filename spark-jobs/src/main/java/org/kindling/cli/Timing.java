package org.kindling.cli;

import java.time.Duration;
import java.util.Arrays;
import java.util.function.LongSupplier;
import org.kindling.ops.Device;

/**
 * The one timing rule of every benchmark and of both sides of every comparison: {@code warmup}
 * untimed runs, then timed runs until there are at least {@code minReps} of them and at least
 * {@code seconds} of timed work; reports the best and the median run. Only {@link Trial#run} is
 * timed: its {@code before} (fresh state) and {@code after} (checking the result) are not.
 * {@code peers/timing.py} is the same rule for the Python peers.
 */
final class Timing {
    private Timing() {
    }

    /** Untimed warm-up runs, then at least {@code minReps} timed runs and at least {@code seconds} of them. */
    record Rule(int warmup, int minReps, double seconds) {
        Rule {
            if (warmup < 0 || minReps < 1 || !(seconds >= 0) || Double.isInfinite(seconds)) {
                throw new IllegalArgumentException("a timing rule needs warmup >= 0, minReps >= 1 and finite seconds >= 0, got "
                        + warmup + ", " + minReps + ", " + seconds);
            }
        }
    }

    /** Seconds of the fastest and of the median timed run, over {@code reps} runs. */
    record Stats(double best, double median, int reps) {
        static Stats of(double... seconds) {
            if (seconds.length == 0) {
                throw new IllegalArgumentException("no timed runs");
            }
            double[] s = seconds.clone();
            Arrays.sort(s);
            if (!(s[0] >= 0) || Double.isNaN(s[s.length - 1])) {
                throw new IllegalArgumentException("run times must be non-negative numbers: " + Arrays.toString(seconds));
            }
            int mid = s.length / 2;
            double median = s.length % 2 == 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
            return new Stats(s[0], median, s.length);
        }

        /** {@code work} units per second at the best run. */
        double bestRate(double work) {
            return work / best;
        }

        /** {@code work} units per second at the median run. */
        double medianRate(double work) {
            return work / median;
        }
    }

    /** One run of the work: only {@link #run} is timed. */
    @FunctionalInterface
    interface Trial {
        /** Untimed, before each run: e.g. fresh inputs or a cold tokenizer. */
        default void before() throws Exception {
        }

        void run() throws Exception;

        /** Untimed, after each run: e.g. checking its result. */
        default void after() throws Exception {
        }
    }

    /** How long a timed run may leave kernels running on its device. */
    static final Duration DEVICE_DEADLINE = Duration.ofMinutes(5);

    /**
     * Waits until the kernels launched on {@code dev} so far have finished: an asynchronous device
     * returns at once from a launch, so every timed run ends here (at once on the CPU).
     */
    static void finish(Device dev, String what) {
        if (!dev.fence().await(DEVICE_DEADLINE)) {
            throw new IllegalStateException(what + " did not finish on " + dev + " within " + DEVICE_DEADLINE);
        }
    }

    static Stats measure(Rule rule, Trial trial) throws Exception {
        return measure(rule, trial, trial, System::nanoTime);
    }

    /** Warms up with {@code warm} (e.g. on other input than the timed runs see) and times {@code timed}. */
    static Stats measure(Rule rule, Trial warm, Trial timed) throws Exception {
        return measure(rule, warm, timed, System::nanoTime);
    }

    static Stats measure(Rule rule, Trial warm, Trial timed, LongSupplier nanoClock) throws Exception {
        for (int i = 0; i < rule.warmup(); i++) {
            warm.before();
            warm.run();
            warm.after();
        }
        double[] runs = new double[Math.max(rule.minReps(), 8)];
        int n = 0;
        double total = 0;
        while (n < rule.minReps() || total < rule.seconds()) {
            timed.before();
            long t0 = nanoClock.getAsLong();
            timed.run();
            double s = (nanoClock.getAsLong() - t0) / 1e9;
            timed.after();
            if (n == runs.length) {
                runs = Arrays.copyOf(runs, n * 2);
            }
            runs[n++] = s;
            total += s;
        }
        return Stats.of(Arrays.copyOf(runs, n));
    }
}
