package org.kindling.cli;

import java.io.PrintWriter;
import picocli.CommandLine;
import picocli.CommandLine.Command;

/** The {@code kindling} command: entry point for {@code bin/kindling} and {@code spark-submit --class}. */
@Command(name = "kindling", mixinStandardHelpOptions = true, versionProvider = BuildInfo.class,
        description = "Efficient transformer training inside Apache Spark.",
        subcommands = {VersionCommand.class, QuickstartCommand.class, PrepareCommand.class, TrainCommand.class, GenerateCommand.class, ExportCommand.class,
            EvalCommand.class, ReportCommand.class, NotebookCommand.class,
            BenchCommand.class, CommandLine.HelpCommand.class})
public final class Kindling implements Runnable {
    private static final System.Logger LOG = System.getLogger(Kindling.class.getName());
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    public static void main(String[] args) {
        System.exit(run(args));
    }

    /** Runs a command line and returns its exit code (0 ok, 1 failure, 2 usage error). */
    public static int run(String... args) {
        return run(new PrintWriter(System.out, true), new PrintWriter(System.err, true), args);
    }

    /** Runs a command line with the given stdout and stderr. */
    public static int run(PrintWriter out, PrintWriter err, String... args) {
        routeJdkLoggingToLog4j();
        return execute(new Kindling(), out, err, args);
    }

    /**
     * Runs a command line of the command {@code root} (Kindling, or {@link DeviceCheck}'s subset): the CPU GEMM
     * notice before a command that computes, errors as one line naming the command; returns the exit code.
     */
    static int execute(Object root, PrintWriter out, PrintWriter err, String... args) {
        return new CommandLine(root)
                .setOut(out)
                .setErr(err)
                .setExecutionStrategy(parsed -> {
                    if (computes(parsed)) {
                        LOG.log(System.Logger.Level.INFO, VersionCommand.gemmNotice());
                    }
                    return new CommandLine.RunLast().execute(parsed);
                })
                .setExecutionExceptionHandler((e, cmd, parsed) -> {
                    cmd.getErr().println("kindling " + cmd.getCommandName() + ": " + message(e));
                    return 1;
                })
                .execute(args);
    }

    /** Whether the command runs kernels (not version, report, help, a group of subcommands or a usage error). */
    private static boolean computes(CommandLine.ParseResult parsed) {
        CommandLine.ParseResult last = parsed;
        while (last.hasSubcommand()) {
            last = last.subcommand();
        }
        Object command = last.commandSpec().userObject();
        return !(command instanceof VersionCommand || command instanceof ReportCommand || command instanceof NotebookCommand
                || command instanceof CommandLine.HelpCommand
                || !last.commandSpec().subcommands().isEmpty() || last.isUsageHelpRequested());
    }

    /**
     * Kindling logs through the JDK's System.Logger; Spark bridges it to log4j only once a
     * SparkContext starts, so commands without one would print the JDK's two-line format.
     */
    private static void routeJdkLoggingToLog4j() {
        if (!org.slf4j.bridge.SLF4JBridgeHandler.isInstalled()) {
            org.slf4j.bridge.SLF4JBridgeHandler.removeHandlersForRootLogger();
            org.slf4j.bridge.SLF4JBridgeHandler.install();
        }
    }

    /** An API option error as this command's usage error, in the words of the layer that named the flag. */
    static CommandLine.ParameterException usage(CommandLine cmd, IllegalArgumentException e) {
        return new CommandLine.ParameterException(cmd, e instanceof org.kindling.api.InvalidOptionException o ? o.reason()
                : e.getMessage());
    }

    private static String message(Throwable e) {
        return e.getMessage() != null ? e.getMessage() : e.toString();
    }

    @Override
    public void run() {
        throw new CommandLine.ParameterException(spec.commandLine(), "a subcommand is required");
    }
}
