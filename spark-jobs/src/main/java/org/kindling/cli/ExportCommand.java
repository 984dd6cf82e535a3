package org.kindling.cli;

import java.io.IOException;
import java.nio.file.Path;
import java.util.concurrent.Callable;
import org.kindling.api.ExportBuilder;
import org.kindling.api.InvalidOptionException;
import org.kindling.api.KindlingApi;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import picocli.CommandLine;

@Command(name = "export", mixinStandardHelpOptions = true,
        description = {"Write a run's checkpoint for Hugging Face transformers: model.safetensors, config.json and",
            "tokenizer.json, loadable with GPT2LMHeadModel.from_pretrained(DIR)."})
final class ExportCommand implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @CommandLine.Mixin
    RunOptions target;

    @Option(names = "--format", defaultValue = "hf-gpt2", description = "export format; hf-gpt2 (default)")
    String format;

    @Option(names = "--out", required = true, description = "local directory to write")
    Path out;

    @Override
    public Integer call() throws IOException {
        CommandLine cmd = spec.commandLine();
        ExportBuilder b = KindlingApi.export(target.run).format(format).out(out);
        if (target.step != null) {
            b.step(target.step);
        }
        String ckpt;
        try {
            ckpt = b.run();
        } catch (InvalidOptionException e) {
            throw Kindling.usage(cmd, e);
        }
        cmd.getErr().printf("exported %s %s to %s%n", target.run, ckpt, out);
        cmd.getErr().flush();
        return 0;
    }
}
