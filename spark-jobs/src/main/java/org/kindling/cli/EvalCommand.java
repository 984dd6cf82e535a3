package org.kindling.cli;

import java.io.IOException;
import java.util.concurrent.Callable;
import org.kindling.api.EvalBuilder;
import org.kindling.api.EvalResult;
import org.kindling.api.InvalidOptionException;
import org.kindling.api.KindlingApi;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import picocli.CommandLine;

@Command(name = "eval", mixinStandardHelpOptions = true,
        description = {"Mean next-token loss and perplexity of a run's checkpoint over one pass of a prepared dataset",
            "(or its first --batches batches)."})
final class EvalCommand implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @CommandLine.Mixin
    RunOptions target;

    @CommandLine.Mixin
    DeviceOption device;

    @Option(names = "--data", required = true, description = "a prepared dataset (any Hadoop path)")
    String data;

    @Option(names = "--batch-tokens", defaultValue = "8192", description = "tokens per batch (default ${DEFAULT-VALUE})")
    int batchTokens;

    @Option(names = "--batches", description = "stop after this many batches (default: the whole dataset)")
    Integer batches;

    @Override
    public Integer call() throws IOException {
        CommandLine cmd = spec.commandLine();
        EvalBuilder b = KindlingApi.evaluate(target.run).data(data).batchTokens(batchTokens).device(device.checked(cmd));
        if (target.step != null) {
            b.step(target.step);
        }
        if (batches != null) {
            b.batches(batches);
        }
        EvalResult r;
        try {
            r = b.run();
        } catch (InvalidOptionException e) {
            throw Kindling.usage(cmd, e);
        }
        cmd.getOut().printf("loss %.4f perplexity %.3f (%,d predicted tokens in %d batches, %s)%n", r.loss(), r.perplexity(),
                r.tokens(), r.batches(), r.checkpoint());
        cmd.getOut().flush();
        return 0;
    }
}
