package org.kindling.cli;

import java.util.LinkedHashMap;
import java.util.Map;
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

    static double round(double v) {
        return Math.round(v * 100) / 100.0;
    }
}
