package org.kindling.cli;

import java.io.IOException;
import java.io.PrintWriter;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import org.apache.spark.sql.SparkSession;
import org.kindling.api.InvalidOptionException;
import org.kindling.api.KindlingApi;
import org.kindling.api.PrepareBuilder;
import org.kindling.api.PreparedData;
import org.kindling.data.PrepareJob;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

@Command(name = "prepare", mixinStandardHelpOptions = true,
        description = {"Tokenize a corpus into Arrow shards with Spark: validate documents (rejects go to DIR/rejects/),",
            "train a byte-level BPE tokenizer or load a Hugging Face tokenizer.json, bucket by length, and write",
            "DIR/shards/*.arrow, DIR/tokenizer.json and, last, DIR/manifest.json. Paths are any Hadoop path."})
final class PrepareCommand implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--input", required = true, arity = "1..*", description = "input files or directories")
    List<String> inputs;

    @Option(names = "--output", required = true, description = "dataset directory to create")
    String output;

    @Option(names = "--format", description = "text, jsonl or parquet (default: by file extension)")
    String format;

    @Option(names = "--line-docs", description = "text: every line is a document (default: every file is one)")
    boolean lineDocs;

    @Option(names = "--text-field", defaultValue = "text", description = "JSON key or Parquet column of the text (default ${DEFAULT-VALUE})")
    String textField;

    @Option(names = "--tokenizer", description = "a Hugging Face tokenizer.json to use instead of training one")
    String tokenizer;

    @Option(names = "--vocab-size", defaultValue = "8192", description = "vocabulary of a trained tokenizer (default ${DEFAULT-VALUE})")
    int vocabSize;

    @Option(names = "--max-len", defaultValue = "1024", description = "longest chunk in tokens; longer documents are split (default ${DEFAULT-VALUE})")
    int maxLen;

    @Option(names = "--buckets", split = ",", description = "ascending bucket bounds ending at --max-len (default: 128, 256, … --max-len)")
    List<Integer> buckets;

    @Option(names = "--dedup", description = "drop exact duplicate documents")
    boolean dedup;

    @Option(names = "--max-doc-bytes", defaultValue = "16777216", description = "reject larger documents (default ${DEFAULT-VALUE})")
    long maxDocBytes;

    @Option(names = "--master", description = "Spark master (default: the spark-submit one, else local[*])")
    String master;

    @Option(names = "--overwrite", description = "replace an existing dataset")
    boolean overwrite;

    @Option(names = "--progress-interval", description = "time between progress lines on stderr, e.g. 2s or 500ms (default 10s; "
            + "sets Spark's " + PrepareJob.PROGRESS_INTERVAL + ")")
    String progressInterval;

    @Option(names = "--split-bytes", description = "line-delimited text (--line-docs) and JSONL files larger than this are read by "
            + "several tasks, a range of this size each, e.g. 64m or 512k (default 64m; sets Spark's " + PrepareJob.SPLIT_BYTES + ")")
    String splitBytes;

    @Override
    public Integer call() throws IOException {
        CommandLine cmd = spec.commandLine();
        try {
            builder(null).check();
        } catch (InvalidOptionException e) {
            throw Kindling.usage(cmd, e);
        }
        try {
            if (progressInterval != null) {
                PrepareJob.positiveMs(progressInterval, "--progress-interval");
            }
            if (splitBytes != null) {
                PrepareJob.positiveBytes(splitBytes, "--split-bytes");
            }
        } catch (IllegalArgumentException e) {
            throw new CommandLine.ParameterException(cmd, e.getMessage());
        }
        Map<String, String> conf = new java.util.HashMap<>();
        if (progressInterval != null) {
            conf.put(PrepareJob.PROGRESS_INTERVAL, progressInterval);
        }
        if (splitBytes != null) {
            conf.put(PrepareJob.SPLIT_BYTES, splitBytes);
        }
        PrintWriter err = cmd.getErr();
        SparkSession spark = Spark.session("kindling prepare", master, conf);
        try {
            PreparedData r = builder(spark).progress(err).run();
            double s = r.seconds();
            err.printf("prepared %s: %,d documents, %,d tokens, %d shards, vocab %d; rejects %s%n", output, r.documents(), r.tokens(),
                    r.shards().size(), r.vocabSize(), r.rejects().isEmpty() ? "none" : r.rejects());
            err.printf("%.1f s: %,.0f documents/s, %.2f MB/s of input, %,.0f tokens/s%n", s, r.documents() / s,
                    r.inputBytes() / 1e6 / s, r.tokens() / s);
            err.flush();
        } finally {
            spark.stop();
        }
        return 0;
    }

    private PrepareBuilder builder(SparkSession spark) {
        return KindlingApi.prepare(spark).input(inputs.toArray(String[]::new)).output(output).format(format).lineDocs(lineDocs)
                .textField(textField).tokenizer(tokenizer).vocabSize(vocabSize).maxLen(maxLen).buckets(buckets).dedup(dedup)
                .maxDocBytes(maxDocBytes).overwrite(overwrite);
    }
}
