package org.kindling.cli;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import org.apache.spark.sql.SparkSession;
import org.kindling.api.KindlingApi;
import org.kindling.api.PreparedData;
import org.kindling.data.BpeTokenizer;
import org.kindling.data.BpeTrainer;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

@Command(name = "prepare", mixinStandardHelpOptions = true,
        description = {"Corpus preparation throughput beside its ceiling, in the same run: `kindling prepare` (local Spark on",
            "--threads cores, one document per line, a given tokenizer) on the whole input, then the cold single-thread encode",
            "rate: a freshly loaded tokenizer encoding the input's first --sample-mb MB once on one thread. Prints the",
            "prepare rate as a share of threads x the single-thread rate. Without --input the input is a synthetic corpus",
            "of --mb MB (Zipf-distributed pseudo-words), written once into --work and reused."})
final class PrepareBench implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--input", description = "a UTF-8 text file, one document per line (default: the synthetic corpus)")
    Path input;

    @Option(names = "--mb", defaultValue = "512", description = "size of the synthetic corpus in MB (default ${DEFAULT-VALUE})")
    int mb;

    @Option(names = "--work", description = "directory for the synthetic corpus (kept for later runs), the trained tokenizer "
            + "and the prepared dataset (deleted after the run) (default: kindling-bench-prepare in the temp directory)")
    Path work;

    @Option(names = "--tokenizer", description = "a tokenizer.json (default: one trained on the input's first 4 MB, untimed)")
    Path tokenizer;

    @Option(names = "--vocab", defaultValue = "8192", description = "vocabulary of the trained tokenizer (default ${DEFAULT-VALUE})")
    int vocab;

    @Option(names = "--sample-mb", defaultValue = "64", description = "text the single-thread encode rate is timed on, from the "
            + "start of the input (default ${DEFAULT-VALUE})")
    int sampleMb;

    @CommandLine.Mixin
    BenchOptions common;

    /** Text the default tokenizer is trained on. */
    private static final long TRAIN_BYTES = 4L << 20;

    @Override
    public Integer call() throws Exception {
        CommandLine cmd = spec.commandLine();
        BenchOptions.requirePositive(cmd, "--mb", mb, "--vocab", vocab, "--sample-mb", sampleMb);
        common.requireCpu(cmd, "bench prepare");
        if (input != null && cmd.getParseResult().hasMatchedOption("--mb")) {
            throw new CommandLine.ParameterException(cmd, "--mb sizes the synthetic corpus; it does not apply with --input");
        }
        if (tokenizer != null && cmd.getParseResult().hasMatchedOption("--vocab")) {
            throw new CommandLine.ParameterException(cmd, "--vocab sizes the trained tokenizer; it does not apply with --tokenizer");
        }
        int threads = common.threads(cmd);
        PrintWriter err = cmd.getErr();
        Path dir = work != null ? work : Path.of(System.getProperty("java.io.tmpdir"), "kindling-bench-prepare");
        Path corpus = input;
        if (corpus == null) {
            err.printf("synthetic corpus of %d MB in %s (made once, then reused)%n", mb, dir);
            err.flush();
            corpus = SyntheticCorpus.ensure(dir, mb * 1_000_000L, 42);
        } else if (!Files.isRegularFile(corpus)) {
            throw new CommandLine.ParameterException(cmd, "--input " + corpus + " is not a file");
        }
        String json;
        String tokenizerPath;
        if (tokenizer != null) {
            try {
                json = Files.readString(tokenizer);
                BpeTokenizer.fromJson(json, tokenizer.toString());
            } catch (IOException | IllegalArgumentException e) {
                throw new CommandLine.ParameterException(cmd, "--tokenizer " + tokenizer + ": " + e.getMessage());
            }
            tokenizerPath = tokenizer.toString();
        } else {
            Map<String, Long> counts = new HashMap<>();
            for (String doc : lines(corpus, TRAIN_BYTES)) {
                BpeTrainer.count(doc, counts);
            }
            json = BpeTrainer.train(counts, vocab, List.of(BpeTokenizer.END_OF_TEXT)).toJson();
            Files.createDirectories(dir);
            Path file = dir.resolve("tokenizer.json");
            Files.writeString(file, json);
            tokenizerPath = file.toString();
        }
        Path out = Files.createTempDirectory(Files.createDirectories(dir), "prepared-");
        Timing.Rule once = new Timing.Rule(0, 1, 0);
        PreparedData[] prepared = new PreparedData[1];
        Timing.Stats prepare;
        SparkSession spark = Spark.session("kindling bench prepare", "local[" + threads + "]");
        try {
            String from = corpus.toString();
            prepare = Timing.measure(once, () -> prepared[0] = KindlingApi.prepare(spark).input(from).output(out.toString())
                    .lineDocs(true).tokenizer(tokenizerPath).overwrite(true).run());
        } finally {
            spark.stop();
            LocalFiles.deleteTreeAfter(out, err);
        }
        List<String> sample = lines(corpus, sampleMb * 1_000_000L);
        long sampleBytes = 0;
        for (String doc : sample) {
            sampleBytes += utf8Bytes(doc) + 1;
        }
        BpeTokenizer[] cold = new BpeTokenizer[1];
        String source = tokenizerPath;
        Timing.Stats encode = Timing.measure(once, new Timing.Trial() {
            @Override
            public void before() {
                cold[0] = BpeTokenizer.fromJson(json, source);
            }

            @Override
            public void run() {
                for (String doc : sample) {
                    cold[0].encode(doc);
                }
            }
        });
        double mbPerS = prepare.bestRate(prepared[0].inputBytes() / 1e6);
        double encodeMbPerS = encode.bestRate(sampleBytes / 1e6);
        double share = mbPerS / (threads * encodeMbPerS);
        err.printf("prepare %.1f MB (%,d documents, %,d tokens) on %d threads: %.2f MB/s in %.1f s%n", prepared[0].inputBytes() / 1e6,
                prepared[0].documents(), prepared[0].tokens(), threads, mbPerS, prepare.best());
        err.printf("cold single-thread encode of the first %.1f MB: %.2f MB/s; %d x that = %.2f MB/s; prepare reaches %.0f%% of it%n",
                sampleBytes / 1e6, encodeMbPerS, threads, threads * encodeMbPerS, 100 * share);
        err.flush();
        if (common.json) {
            Map<String, Object> row = new LinkedHashMap<>();
            row.put("bench", "prepare");
            row.put("mb", BenchOptions.round(prepared[0].inputBytes() / 1e6));
            row.put("threads", threads);
            row.put("mb_per_s", BenchOptions.round(mbPerS));
            row.put("encode_mb_per_s", BenchOptions.round(encodeMbPerS));
            row.put("share", Math.round(share * 1e4) / 1e4);
            Json.printLine(cmd.getOut(), row);
        }
        return 0;
    }

    /** The file's first lines holding at least {@code bytes} UTF-8 bytes with their newlines (or all of them). */
    private static List<String> lines(Path file, long bytes) throws IOException {
        List<String> docs = new ArrayList<>();
        long read = 0;
        try (BufferedReader in = Files.newBufferedReader(file, StandardCharsets.UTF_8)) {
            for (String line = in.readLine(); line != null && (docs.isEmpty() || read < bytes); line = in.readLine()) {
                docs.add(line);
                read += utf8Bytes(line) + 1;
            }
        }
        return docs;
    }

    private static long utf8Bytes(String s) {
        return s.getBytes(StandardCharsets.UTF_8).length;
    }
}
