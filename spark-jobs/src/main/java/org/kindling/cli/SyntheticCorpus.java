package org.kindling.cli;

import java.io.BufferedWriter;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.SplittableRandom;

/**
 * Line-delimited text for benchmarks, one document per line, made here rather than downloaded:
 * pseudo-words of English letter frequencies drawn from a Zipf law (so a tokenizer's piece cache
 * sees a long tail as on real text), with sentences, commas and numbers, from a fixed seed.
 */
final class SyntheticCorpus {
    /** English letter frequencies (per mille), a–z. */
    private static final int[] LETTERS = {82, 15, 28, 43, 127, 22, 20, 61, 70, 2, 8, 40, 24, 67, 75, 19, 1, 60, 63, 91, 28, 10, 24,
        2, 20, 1};
    private static final int VOCAB = 50_000;

    private final String[] words = new String[VOCAB];
    private final double[] cumulative = new double[VOCAB];
    private final SplittableRandom rnd;

    SyntheticCorpus(long seed) {
        rnd = new SplittableRandom(seed);
        int[] letterCdf = new int[LETTERS.length];
        int sum = 0;
        for (int i = 0; i < LETTERS.length; i++) {
            sum += LETTERS[i];
            letterCdf[i] = sum;
        }
        double total = 0;
        for (int w = 0; w < VOCAB; w++) {
            // Frequent words are short, as in natural text.
            int len = 1 + Math.min(13, (int) (Math.log1p(w) / 1.6) + rnd.nextInt(3));
            char[] c = new char[len];
            for (int i = 0; i < len; i++) {
                int x = rnd.nextInt(sum);
                int j = 0;
                while (letterCdf[j] <= x) {
                    j++;
                }
                c[i] = (char) ('a' + j);
            }
            words[w] = new String(c);
            total += 1 / Math.pow(w + 2.7, 1.07);
            cumulative[w] = total;
        }
        for (int w = 0; w < VOCAB; w++) {
            cumulative[w] /= total;
        }
    }

    /**
     * The corpus of at least {@code bytes} UTF-8 bytes in {@code dir}, written once and reused by later runs with the
     * same size and seed (it is named after both); written to a temporary name first, so a killed run leaves no
     * truncated corpus behind.
     */
    static Path ensure(Path dir, long bytes, long seed) throws IOException {
        Path file = dir.resolve("synthetic-" + bytes + "b-seed" + seed + ".txt");
        if (Files.isRegularFile(file) && Files.size(file) >= bytes) {
            return file;
        }
        Files.createDirectories(dir);
        Path tmp = Files.createTempFile(dir, "synthetic-", ".partial");
        try {
            new SyntheticCorpus(seed).write(tmp, bytes);
            Files.move(tmp, file, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        } finally {
            Files.deleteIfExists(tmp);
        }
        return file;
    }

    private void write(Path file, long bytes) throws IOException {
        long written = 0;
        StringBuilder doc = new StringBuilder(1 << 16);
        try (BufferedWriter out = Files.newBufferedWriter(file, StandardCharsets.UTF_8)) {
            while (written < bytes) {
                doc.setLength(0);
                document(doc);
                doc.append('\n');
                out.append(doc);
                written += doc.length(); // ASCII only: one byte per char
            }
        }
    }

    /** One document: log-normal length around 300 words, sentences of about 15. */
    private void document(StringBuilder sb) {
        int n = (int) Math.min(5000, Math.max(5, Math.exp(Math.log(300) + rnd.nextGaussian() * 0.9)));
        boolean sentenceStart = true;
        for (int i = 0; i < n; i++) {
            if (i > 0) {
                sb.append(' ');
            }
            if (rnd.nextInt(50) == 0) {
                sb.append(rnd.nextInt(rnd.nextBoolean() ? 100 : 100_000));
            } else {
                String w = words[word()];
                if (sentenceStart) {
                    sb.append(Character.toUpperCase(w.charAt(0))).append(w, 1, w.length());
                } else {
                    sb.append(w);
                }
            }
            sentenceStart = rnd.nextInt(15) == 0;
            if (sentenceStart || i == n - 1) {
                sb.append('.');
            } else if (rnd.nextInt(12) == 0) {
                sb.append(',');
            }
        }
    }

    private int word() {
        double x = rnd.nextDouble();
        int lo = 0;
        int hi = VOCAB - 1;
        while (lo < hi) {
            int mid = (lo + hi) >>> 1;
            if (cumulative[mid] < x) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        return lo;
    }
}
