package org.kindling.cli;

import java.io.IOException;
import java.util.concurrent.Callable;
import org.apache.hadoop.conf.Configuration;
import org.kindling.data.DatasetReader;
import org.kindling.models.Gpt;
import org.kindling.models.data.TokenBatch;
import org.kindling.ops.Device;
import org.kindling.train.RunDir;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

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
        if (batches != null && batches < 1) {
            throw new CommandLine.ParameterException(cmd, "--batches must be at least 1, got " + batches);
        }
        device.checked(cmd);
        Configuration conf = new Configuration();
        RunDir dir = new RunDir(target.run, conf);
        String ckpt = dir.checkpoint(target.step);
        String runTokenizer = dir.tokenizer().sha256();
        double loss = 0;
        long predicted = 0;
        int read = 0;
        try (Device dev = device.open(cmd); Gpt model = dir.model(ckpt, dev);
             DatasetReader reader = new DatasetReader(data, conf, 0, 0, 1, batchTokens)) {
            if (!reader.info().tokenizerSha256().equals(runTokenizer)) {
                throw new IllegalArgumentException(data + " was tokenized with another tokenizer than the run's " + target.run + "/"
                        + RunDir.TOKENIZER);
            }
            do {
                DatasetReader.Batch b = reader.next();
                loss += model.forward(new TokenBatch(b.tokens(), b.cuSeqlens()), 0f);
                predicted += model.predicted();
                read++;
            } while (!reader.atEpochEnd() && (batches == null || read < batches));
        }
        double mean = loss / Math.max(1, predicted);
        cmd.getOut().printf("loss %.4f perplexity %.3f (%,d predicted tokens in %d batches, %s)%n", mean, Math.exp(mean), predicted,
                read, ckpt);
        cmd.getOut().flush();
        return 0;
    }
}
