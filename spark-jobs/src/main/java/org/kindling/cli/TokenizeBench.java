package org.kindling.cli;

import ai.djl.huggingface.tokenizers.Encoding;
import ai.djl.huggingface.tokenizers.HuggingFaceTokenizer;
import java.io.IOException;
import java.io.PrintWriter;
import java.nio.ByteBuffer;
import java.nio.CharBuffer;
import java.nio.charset.CharsetDecoder;
import java.nio.charset.CoderResult;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import org.kindling.data.BpeTokenizer;
import org.kindling.ops.cpu.CpuPool;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

@Command(name = "tokenize", mixinStandardHelpOptions = true,
        description = {"Encode throughput of Kindling's tokenizer beside Hugging Face tokenizers (through DJL) on the same",
            "tokenizer.json and documents (the input's lines) in the same run, and whether the token ids agree.",
            "The input is split in two: both sides warm up on the first half and are timed on the second, each timed run",
            "with a freshly loaded tokenizer, so no cache holds the timed text. Kindling encodes the documents one by one",
            "on --threads threads; Hugging Face gets them all in one batchEncode (its encode_batch, on its own thread pool)."})
final class TokenizeBench implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--tokenizer", required = true, description = "a tokenizer.json (byte-level BPE)")
    Path tokenizerFile;

    @Option(names = "--input", required = true, description = "a UTF-8 text file, one document per line, at least 2 lines")
    Path input;

    @Option(names = "--seconds", defaultValue = "2", description = "least timed work for each tokenizer, after 2 warm-up "
            + "runs and with at least 3 timed runs (default ${DEFAULT-VALUE})")
    double seconds;

    @CommandLine.Mixin
    BenchOptions common;

    @Override
    public Integer call() throws Exception {
        CommandLine cmd = spec.commandLine();
        if (!(seconds >= 0)) {
            throw new CommandLine.ParameterException(cmd, "--seconds must be 0 or more, got " + seconds);
        }
        common.requireCpu(cmd, "bench tokenize");
        int threads = common.threads(cmd);
        String json;
        try {
            json = Files.readString(tokenizerFile);
            BpeTokenizer.fromJson(json, tokenizerFile.toString());
        } catch (IOException | IllegalArgumentException e) {
            throw new CommandLine.ParameterException(cmd, "--tokenizer " + tokenizerFile + ": " + e.getMessage());
        }
        List<String> docs = lines(readUtf8(input));
        if (docs.size() < 2) {
            throw new IllegalArgumentException(input + " has " + docs.size() + " line(s); bench tokenize needs at least 2: it warms "
                    + "up on the first half of the lines and times the second");
        }
        List<String> warm = docs.subList(0, docs.size() / 2);
        List<String> timed = docs.subList(docs.size() / 2, docs.size());
        double timedMb = utf8Bytes(timed) / 1e6;
        Timing.Rule rule = new Timing.Rule(2, 3, seconds);

        BpeTokenizer check = BpeTokenizer.fromJson(json, tokenizerFile.toString());
        int[][] ids = new int[docs.size()][];
        long tokens = 0;
        for (int i = 0; i < docs.size(); i++) {
            ids[i] = check.encode(docs.get(i));
            tokens += ids[i].length;
        }
        Timing.Stats ours;
        try (CpuPool pool = new CpuPool(threads)) {
            BpeTokenizer warmOurs = BpeTokenizer.fromJson(json, tokenizerFile.toString());
            BpeTokenizer[] cold = new BpeTokenizer[1];
            ours = Timing.measure(rule, () -> encodeAll(pool, warmOurs, warm), new Timing.Trial() {
                @Override
                public void before() {
                    cold[0] = BpeTokenizer.fromJson(json, tokenizerFile.toString());
                }

                @Override
                public void run() {
                    encodeAll(pool, cold[0], timed);
                }
            });
        }
        boolean agree;
        Timing.Stats peer;
        try {
            agree = HfPeer.agrees(tokenizerFile, docs, ids);
            peer = HfPeer.measure(tokenizerFile, rule, warm, timed);
        } catch (NoClassDefFoundError e) {
            throw new IllegalStateException("bench tokenize needs ai.djl.huggingface:tokenizers on the classpath; bin/kindling puts it there");
        }
        double oursRate = ours.bestRate(timedMb);
        double peerRate = peer.bestRate(timedMb);
        PrintWriter err = cmd.getErr();
        err.printf("tokenize %s with %s: %,d documents (lines), %,d tokens; warm-up on the first %,d, timed on the other %,d "
                + "(%.2f MB) with a freshly loaded tokenizer each run; best (median) of the timed runs:%n", input, tokenizerFile,
                docs.size(), tokens, warm.size(), timed.size(), timedMb);
        err.printf("  kindling, BpeTokenizer.encode per document on %d thread(s): %.2f (%.2f) MB/s%n", threads, oursRate,
                ours.medianRate(timedMb));
        err.printf("  Hugging Face tokenizers, DJL batchEncode of all documents (encode_batch on its own pool, %d cores here): "
                + "%.2f (%.2f) MB/s%n", Runtime.getRuntime().availableProcessors(), peerRate, peer.medianRate(timedMb));
        err.printf("  kindling / Hugging Face = %.2fx; ids %s%n", oursRate / peerRate, agree ? "agree" : "DIFFER");
        err.flush();
        if (common.json) {
            Map<String, Object> row = new LinkedHashMap<>();
            row.put("bench", "tokenize");
            row.put("mb_per_s", BenchOptions.round(oursRate));
            row.put("peer_mb_per_s", BenchOptions.round(peerRate));
            row.put("tokens", tokens);
            row.put("agree", agree);
            row.put("median_mb_per_s", BenchOptions.round(ours.medianRate(timedMb)));
            row.put("peer_median_mb_per_s", BenchOptions.round(peer.medianRate(timedMb)));
            row.put("threads", threads);
            row.put("documents", docs.size());
            row.put("timed_documents", timed.size());
            row.put("timed_mb", BenchOptions.round(timedMb));
            Json.printLine(cmd.getOut(), row);
        }
        return agree ? 0 : 1;
    }

    /**
     * Hugging Face tokenizers through DJL, in a class of its own: DJL is on bin/kindling's classpath only, and picocli
     * reflects over every command's methods at start-up, so no method of the command itself may name a DJL type.
     */
    private static final class HfPeer {
        /** Whether batchEncode of {@code docs} gives exactly {@code ids}, document by document. */
        static boolean agrees(Path tokenizer, List<String> docs, int[][] ids) throws IOException {
            try (HuggingFaceTokenizer hf = open(tokenizer)) {
                Encoding[] theirs = hf.batchEncode(docs);
                if (theirs.length != docs.size()) {
                    return false;
                }
                for (int d = 0; d < docs.size(); d++) {
                    long[] t = theirs[d].getIds();
                    if (t.length != ids[d].length) {
                        return false;
                    }
                    for (int i = 0; i < t.length; i++) {
                        if (t[i] != ids[d][i]) {
                            return false;
                        }
                    }
                }
                return true;
            }
        }

        /** Warm-up batchEncodes of {@code warm}; timed batchEncodes of {@code timed}, each by a freshly loaded tokenizer. */
        static Timing.Stats measure(Path tokenizer, Timing.Rule rule, List<String> warm, List<String> timed) throws Exception {
            try (HuggingFaceTokenizer warmPeer = open(tokenizer)) {
                HuggingFaceTokenizer[] cold = new HuggingFaceTokenizer[1];
                return Timing.measure(rule, () -> warmPeer.batchEncode(warm), new Timing.Trial() {
                    @Override
                    public void before() throws IOException {
                        cold[0] = open(tokenizer);
                    }

                    @Override
                    public void run() {
                        cold[0].batchEncode(timed);
                    }

                    @Override
                    public void after() {
                        cold[0].close();
                    }
                });
            }
        }

        /** As a user encoding documents for training would: no truncation, no padding, no special tokens added. */
        private static HuggingFaceTokenizer open(Path tokenizer) throws IOException {
            return HuggingFaceTokenizer.builder().optTokenizerPath(tokenizer).optTruncation(false).optPadding(false)
                    .optAddSpecialTokens(false).build();
        }
    }

    /** Every document encoded, the documents split into contiguous ranges across the pool's threads. */
    private static void encodeAll(CpuPool pool, BpeTokenizer tok, List<String> docs) {
        int[][] out = new int[docs.size()][];
        pool.parallelFor(docs.size(), 1, (from, to) -> {
            for (int i = from; i < to; i++) {
                out[i] = tok.encode(docs.get(i));
            }
        });
    }

    /** The text's lines, each with its line end; a last line without one is kept. */
    static List<String> lines(String text) {
        List<String> out = new ArrayList<>();
        int start = 0;
        while (start < text.length()) {
            int nl = text.indexOf('\n', start);
            int end = nl < 0 ? text.length() : nl + 1;
            out.add(text.substring(start, end));
            start = end;
        }
        return out;
    }

    private static long utf8Bytes(List<String> docs) {
        long n = 0;
        for (String d : docs) {
            n += d.getBytes(StandardCharsets.UTF_8).length;
        }
        return n;
    }

    /** The file as UTF-8; invalid bytes are an error naming the file and the byte offset of the first one. */
    static String readUtf8(Path file) throws IOException {
        byte[] bytes = Files.readAllBytes(file);
        CharsetDecoder decoder = StandardCharsets.UTF_8.newDecoder().onMalformedInput(CodingErrorAction.REPORT)
                .onUnmappableCharacter(CodingErrorAction.REPORT);
        ByteBuffer in = ByteBuffer.wrap(bytes);
        // UTF-8 never decodes to more UTF-16 units than it has bytes.
        CharBuffer out = CharBuffer.allocate(bytes.length);
        CoderResult r = decoder.decode(in, out, true);
        if (!r.isError()) {
            r = decoder.flush(out);
        }
        if (r.isError()) {
            int at = in.position();
            throw new IllegalArgumentException(String.format("%s is not valid UTF-8: the byte sequence at byte offset %d (first "
                    + "byte 0x%02x) is malformed", file, at, bytes[at] & 0xff));
        }
        return out.flip().toString();
    }
}
