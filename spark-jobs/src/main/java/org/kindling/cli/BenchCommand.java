package org.kindling.cli;

import picocli.CommandLine;
import picocli.CommandLine.Command;

@Command(name = "bench", mixinStandardHelpOptions = true,
        description = "Benchmarks: each prints its figure beside a baseline measured in the same run.",
        subcommands = {GemmBench.class, AttentionBench.class, TrainBench.class, RecallBench.class, TokenizeBench.class, PrepareBench.class,
            AllReduceBench.class, MixersBench.class, DecodeBench.class, MoeBench.class, SparkBench.class, LinearBench.class, MfacBench.class,
            PipelineBench.class, ScalingBench.class})
final class BenchCommand implements Runnable {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Override
    public void run() {
        throw new CommandLine.ParameterException(spec.commandLine(), "name a benchmark, e.g. 'kindling bench gemm'");
    }
}
