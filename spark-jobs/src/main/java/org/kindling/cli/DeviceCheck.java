package org.kindling.cli;

import java.io.PrintWriter;
import picocli.CommandLine;
import picocli.CommandLine.Command;

/**
 * The command line of the device check bundle ({@code scripts/device-check}): {@code version} and the benchmarks that
 * measure a device, without Spark, Hadoop or Arrow on the classpath. {@link Kindling}'s own command set cannot start
 * there: its Spark commands need Spark's classes, and it routes the JDK's logging into Spark's log4j.
 */
@Command(name = "kindling", mixinStandardHelpOptions = true, versionProvider = BuildInfo.class,
        description = "Kindling's device benchmarks without Spark (the device check bundle).",
        subcommands = {VersionCommand.class, DeviceCheck.Bench.class, CommandLine.HelpCommand.class})
public final class DeviceCheck implements Runnable {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    public static void main(String[] args) {
        System.exit(run(new PrintWriter(System.out, true), new PrintWriter(System.err, true), args));
    }

    /** Runs a command line with the given stdout and stderr and returns its exit code (0 ok, 1 failure, 2 usage error). */
    public static int run(PrintWriter out, PrintWriter err, String... args) {
        return Kindling.execute(new DeviceCheck(), out, err, args);
    }

    @Override
    public void run() {
        throw new CommandLine.ParameterException(spec.commandLine(), "a subcommand is required");
    }

    /** The benchmarks that run on any device and need nothing but gpu-ops and models. */
    @Command(name = "bench", mixinStandardHelpOptions = true,
            description = "Benchmarks: each prints its figure beside a baseline measured in the same run.",
            subcommands = {GemmBench.class, AttentionBench.class, TrainBench.class, MixersBench.class, MoeBench.class,
                DecodeBench.class, RecallBench.class})
    static final class Bench implements Runnable {
        @CommandLine.Spec
        CommandLine.Model.CommandSpec spec;

        @Override
        public void run() {
            throw new CommandLine.ParameterException(spec.commandLine(), "name a benchmark, e.g. 'bench gemm'");
        }
    }
}
