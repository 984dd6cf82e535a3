package org.kindling.cli;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.Callable;
import org.apache.hadoop.conf.Configuration;
import org.kindling.data.BpeTokenizer;
import org.kindling.models.Gpt;
import org.kindling.models.io.HfExport;
import org.kindling.ops.cpu.CpuDevice;
import org.kindling.train.RunDir;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

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
        if (!format.equals("hf-gpt2")) {
            throw new CommandLine.ParameterException(cmd, "--format must be hf-gpt2, got \"" + format + "\"");
        }
        RunDir dir = new RunDir(target.run, new Configuration());
        String ckpt = dir.checkpoint(target.step);
        BpeTokenizer tok = dir.tokenizer();
        try (CpuDevice dev = CpuDevice.open(); Gpt model = dir.model(ckpt, dev)) {
            HfExport.write(model, tok.endOfText(), out);
        }
        Files.writeString(out.resolve("tokenizer.json"), tok.toJson());
        cmd.getErr().printf("exported %s %s to %s%n", target.run, ckpt, out);
        cmd.getErr().flush();
        return 0;
    }
}
