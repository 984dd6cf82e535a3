package org.kindling.cli;

import java.io.IOException;
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.concurrent.Callable;
import org.kindling.data.BpeTokenizer;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

@Command(name = "tokenize", mixinStandardHelpOptions = true,
        description = {"Single-thread encode throughput of Kindling's tokenizer beside Hugging Face tokenizers (through DJL)",
            "on the same text and tokenizer.json in the same run, and whether the token ids agree."})
final class TokenizeBench implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--tokenizer", required = true, description = "a tokenizer.json (byte-level BPE)")
    Path tokenizerFile;

    @Option(names = "--input", required = true, description = "a UTF-8 text file")
    Path input;

    @Option(names = "--seconds", defaultValue = "2", description = "time to spend on each tokenizer (default ${DEFAULT-VALUE})")
    double seconds;

    @CommandLine.Mixin
    BenchOptions common;

    @Override
    public Integer call() throws IOException {
        CommandLine cmd = spec.commandLine();
        String text;
        BpeTokenizer ours;
        try {
            text = Files.readString(input, StandardCharsets.UTF_8);
            ours = BpeTokenizer.fromJson(Files.readString(tokenizerFile), tokenizerFile.toString());
        } catch (IOException | IllegalArgumentException e) {
            throw new CommandLine.ParameterException(cmd, e.getMessage());
        }
        double mb = text.getBytes(StandardCharsets.UTF_8).length / 1e6;
        int[] ids = ours.encode(text);
        double oursRate = mb / best(() -> ours.encode(text));
        double peerRate;
        boolean agree;
        try (ai.djl.huggingface.tokenizers.HuggingFaceTokenizer peer = ai.djl.huggingface.tokenizers.HuggingFaceTokenizer.builder()
                .optTokenizerPath(tokenizerFile).optTruncation(false).optAddSpecialTokens(false).build()) {
            long[] theirs = peer.encode(text).getIds();
            agree = theirs.length == ids.length;
            for (int i = 0; agree && i < ids.length; i++) {
                agree = theirs[i] == ids[i];
            }
            peerRate = mb / best(() -> peer.encode(text));
        } catch (NoClassDefFoundError e) {
            throw new IllegalStateException("bench tokenize needs ai.djl.huggingface:tokenizers on the classpath; bin/kindling puts it there");
        }
        PrintWriter err = cmd.getErr();
        err.printf("tokenize %s (%.2f MB, %,d tokens) with %s: kindling %.2f MB/s, Hugging Face tokenizers %.2f MB/s (%.2fx); ids %s%n",
                input, mb, ids.length, tokenizerFile, oursRate, peerRate, oursRate / peerRate, agree ? "agree" : "DIFFER");
        err.flush();
        if (common.json) {
            Map<String, Object> row = new LinkedHashMap<>();
            row.put("bench", "tokenize");
            row.put("mb_per_s", BenchOptions.round(oursRate));
            row.put("peer_mb_per_s", BenchOptions.round(peerRate));
            row.put("tokens", ids.length);
            row.put("agree", agree);
            Json.printLine(cmd.getOut(), row);
        }
        return agree ? 0 : 1;
    }

    /** Best seconds per run over repeated runs for about {@code seconds}, after one warm-up. */
    private double best(Runnable r) {
        r.run();
        double best = Double.MAX_VALUE;
        long deadline = System.nanoTime() + (long) (seconds * 1e9);
        int runs = 0;
        while (runs < 3 || System.nanoTime() < deadline) {
            long t0 = System.nanoTime();
            r.run();
            best = Math.min(best, (System.nanoTime() - t0) / 1e9);
            runs++;
        }
        return best;
    }
}
