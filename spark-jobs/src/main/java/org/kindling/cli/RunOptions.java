package org.kindling.cli;

import picocli.CommandLine.Option;

/** The options that pick a run's checkpoint, shared by the commands around a run. */
final class RunOptions {
    @Option(names = "--run", required = true, description = "the run directory (any Hadoop path)")
    String run;

    @Option(names = "--step", description = "checkpoint step (default: LATEST)")
    Integer step;
}
