package org.kindling.api;

import java.io.IOException;
import java.io.PrintStream;
import java.io.PrintWriter;
import java.util.ArrayList;
import java.util.List;
import java.util.function.Consumer;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.kindling.data.PrepareJob;
import org.kindling.data.PrepareOptions;

/**
 * Prepares a corpus, from files ({@link #input}) or a DataFrame's text column ({@link #texts}), into
 * a dataset: what {@code kindling prepare} does. Options default as the command's do; all are
 * checked by {@link #run()}. Builders are not thread-safe; {@link #run()} may be called again.
 */
public final class PrepareBuilder {
    private final SparkSession spark;
    private final List<String> inputs = new ArrayList<>();
    private Dataset<Row> frame;
    private String output;
    private String format;
    private boolean lineDocs;
    private String textField = "text";
    private String tokenizer;
    private int vocabSize = 8192;
    private int maxLen = 1024;
    private List<Integer> buckets;
    private boolean dedup;
    private long maxDocBytes = 16L << 20;
    private boolean overwrite;
    private Consumer<String> progress;

    PrepareBuilder(SparkSession spark) {
        this.spark = spark;
    }

    /** Input files or directories (any Hadoop path, globs allowed); adds to earlier ones. */
    public PrepareBuilder input(String... paths) {
        inputs.addAll(List.of(paths));
        return this;
    }

    /** Every row's {@code column} is one document (null or non-string values become rejects with their reason). */
    public PrepareBuilder texts(Dataset<Row> frame, String column) {
        this.frame = frame;
        this.textField = column;
        return this;
    }

    /** The dataset directory to write (required). */
    public PrepareBuilder output(String dir) {
        this.output = dir;
        return this;
    }

    /** Input format of files: {@code text}, {@code jsonl} or {@code parquet} (default: by file extension). */
    public PrepareBuilder format(String format) {
        this.format = format;
        return this;
    }

    /** Text files: every line is a document (default: every file is one). */
    public PrepareBuilder lineDocs(boolean lineDocs) {
        this.lineDocs = lineDocs;
        return this;
    }

    /** JSONL key or Parquet column of the text (default {@code text}). */
    public PrepareBuilder textField(String field) {
        this.textField = field;
        return this;
    }

    /** A Hugging Face tokenizer.json to use instead of training one. */
    public PrepareBuilder tokenizer(String path) {
        this.tokenizer = path;
        return this;
    }

    /** Vocabulary of a trained tokenizer (default 8192). */
    public PrepareBuilder vocabSize(int vocabSize) {
        this.vocabSize = vocabSize;
        return this;
    }

    /** Longest chunk in tokens; longer documents are split (default 1024). */
    public PrepareBuilder maxLen(int maxLen) {
        this.maxLen = maxLen;
        return this;
    }

    /** Ascending length bucket bounds ending at {@link #maxLen} (default 128, 256, … maxLen). */
    public PrepareBuilder buckets(List<Integer> buckets) {
        this.buckets = buckets;
        return this;
    }

    /** Drop exact duplicate documents. */
    public PrepareBuilder dedup(boolean dedup) {
        this.dedup = dedup;
        return this;
    }

    /** Reject larger documents (default 16 MiB). */
    public PrepareBuilder maxDocBytes(long bytes) {
        this.maxDocBytes = bytes;
        return this;
    }

    /** Replace an existing dataset. */
    public PrepareBuilder overwrite(boolean overwrite) {
        this.overwrite = overwrite;
        return this;
    }

    /**
     * Where the progress lines (input files and bytes read, or a DataFrame's partitions, rows and bytes read; rate, ETA)
     * go; default System.err as it is when {@link #run()} starts.
     */
    public PrepareBuilder progress(PrintStream out) {
        this.progress = Lines.of(out);
        return this;
    }

    /** As {@link #progress(PrintStream)}, for a writer. */
    public PrepareBuilder progress(PrintWriter out) {
        this.progress = Lines.of(out);
        return this;
    }

    /** Checks the options without running anything (a command line does so before it starts Spark). */
    public PrepareBuilder check() {
        options();
        return this;
    }

    /** Checks the options, runs the Spark job and returns the dataset's summary. */
    public PreparedData run() throws IOException {
        PrepareOptions opts = options();
        if (spark == null) {
            throw new InvalidOptionException("spark", "a SparkSession is required to run");
        }
        long t0 = System.nanoTime();
        PrepareJob.Result r = frame != null ? PrepareJob.run(spark, frame, opts, Lines.orStderr(progress))
                : PrepareJob.run(spark, opts, Lines.orStderr(progress));
        double s = (System.nanoTime() - t0) / 1e9;
        return new PreparedData(output, r.documents(), r.tokens(), r.rejects(), r.shards(), r.tokenizer().vocabSize(), r.inputBytes(), s);
    }

    private PrepareOptions options() {
        if (frame == null && inputs.isEmpty()) {
            throw new InvalidOptionException("input", "give input files (input) or a DataFrame (texts)");
        }
        if (frame != null && !inputs.isEmpty()) {
            throw new InvalidOptionException("texts", "give either input files or a DataFrame, not both");
        }
        if (frame != null && !List.of(frame.columns()).contains(textField)) {
            throw new InvalidOptionException("texts", "the DataFrame has no column \"" + textField + "\"; its columns are "
                    + List.of(frame.columns()));
        }
        if (frame != null && format != null) {
            throw new InvalidOptionException("format", "applies to input files, not to a DataFrame");
        }
        try {
            return new PrepareOptions(frame != null ? List.of("DataFrame column " + textField) : inputs, output,
                    format == null ? null : PrepareOptions.Format.parse(format), lineDocs, textField, tokenizer, vocabSize, maxLen,
                    buckets, dedup, maxDocBytes, overwrite);
        } catch (IllegalArgumentException e) {
            throw InvalidOptionException.of(e, "options");
        }
    }
}
