package org.kindling.api;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import org.apache.hadoop.conf.Configuration;
import org.kindling.data.BpeTokenizer;
import org.kindling.models.Gpt;
import org.kindling.models.io.HfExport;
import org.kindling.ops.cpu.CpuDevice;
import org.kindling.train.RunDir;

/**
 * Writes a run's checkpoint for Hugging Face transformers ({@code model.safetensors},
 * {@code config.json}, {@code tokenizer.json}, loadable with {@code GPT2LMHeadModel.from_pretrained}):
 * what {@code kindling export} does.
 */
public final class ExportBuilder {
    private final String run;
    private Configuration conf = Hadoop.sessionOrNew();
    private Integer step;
    private String format = "hf-gpt2";
    private Path out;

    ExportBuilder(String run) {
        this.run = run;
    }

    /** The checkpoint's step (default: LATEST). */
    public ExportBuilder step(int step) {
        this.step = step;
        return this;
    }

    /** Export format; {@code hf-gpt2} (the default) is the one there is. */
    public ExportBuilder format(String format) {
        this.format = format;
        return this;
    }

    /** Local directory to write (required). */
    public ExportBuilder out(Path dir) {
        this.out = dir;
        return this;
    }

    /** The Hadoop configuration to reach the run with (default: the Spark session's, else a new one). */
    public ExportBuilder hadoop(Configuration conf) {
        this.conf = conf;
        return this;
    }

    /** Checks the options, writes the directory and returns the checkpoint exported ({@code step-N}). */
    public String run() throws IOException {
        if (!"hf-gpt2".equals(format)) {
            throw new InvalidOptionException("format", "--format must be hf-gpt2, got \"" + format + "\"");
        }
        if (out == null) {
            throw new InvalidOptionException("out", "is required");
        }
        RunDir dir = new RunDir(run, conf);
        String ckpt = dir.checkpoint(step);
        BpeTokenizer tok = dir.tokenizer();
        try (CpuDevice dev = CpuDevice.open(); Gpt model = dir.model(ckpt, dev)) {
            HfExport.write(model, tok.endOfText(), out);
        }
        Files.writeString(out.resolve("tokenizer.json"), tok.toJson());
        return ckpt;
    }
}
