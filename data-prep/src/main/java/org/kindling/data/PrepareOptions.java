package org.kindling.data;

import java.util.ArrayList;
import java.util.List;
import java.util.Locale;

/**
 * What {@code kindling prepare} does, validated in one place.
 *
 * @param inputs files or directories (any Hadoop path)
 * @param output the dataset directory
 * @param format text, jsonl or parquet; null detects it from each file's extension
 * @param lineDocs text only: every line is a document (else every file is one)
 * @param textField the JSON key or Parquet column holding the text
 * @param tokenizer a tokenizer.json to use, or null to train one
 * @param vocabSize the vocabulary of a trained tokenizer
 * @param maxLen longest chunk of tokens; longer documents are split
 * @param buckets ascending length bounds, the last equal to maxLen
 * @param dedup drop exact duplicate documents (by content hash)
 * @param maxDocBytes longer documents are rejected
 * @param overwrite replace an existing dataset
 */
public record PrepareOptions(List<String> inputs, String output, Format format, boolean lineDocs, String textField,
                             String tokenizer, int vocabSize, int maxLen, List<Integer> buckets, boolean dedup, long maxDocBytes,
                             boolean overwrite) {
    /** Input formats. */
    public enum Format {
        TEXT, JSONL, PARQUET;

        public static Format parse(String s) {
            try {
                return valueOf(s.toUpperCase(Locale.ROOT));
            } catch (IllegalArgumentException e) {
                throw new IllegalArgumentException("--format must be text, jsonl or parquet, got \"" + s + "\"");
            }
        }

        /** The format a file's name implies. */
        public static Format of(String path) {
            String p = path.toLowerCase(Locale.ROOT);
            if (p.endsWith(".jsonl") || p.endsWith(".json") || p.endsWith(".ndjson")) {
                return JSONL;
            }
            return p.endsWith(".parquet") ? PARQUET : TEXT;
        }
    }

    public PrepareOptions {
        inputs = List.copyOf(inputs);
        if (inputs.isEmpty()) {
            throw new IllegalArgumentException("--input needs at least one path");
        }
        if (output == null || output.isBlank()) {
            throw new IllegalArgumentException("--output is required");
        }
        if (tokenizer == null && vocabSize < 257) {
            throw new IllegalArgumentException("--vocab-size must be at least 257 (256 bytes + end-of-text), got " + vocabSize);
        }
        if (maxLen < 2) {
            throw new IllegalArgumentException("--max-len must be at least 2, got " + maxLen);
        }
        buckets = buckets == null || buckets.isEmpty() ? powersOfTwo(maxLen) : List.copyOf(buckets);
        for (int i = 0; i < buckets.size(); i++) {
            if (buckets.get(i) < 1 || (i > 0 && buckets.get(i) <= buckets.get(i - 1))) {
                throw new IllegalArgumentException("--buckets must be ascending positive lengths, got " + buckets);
            }
        }
        if (buckets.get(buckets.size() - 1) != maxLen) {
            throw new IllegalArgumentException("the last bucket must equal --max-len " + maxLen + ", got " + buckets);
        }
        if (maxDocBytes < 1) {
            throw new IllegalArgumentException("--max-doc-bytes must be at least 1, got " + maxDocBytes);
        }
        if (textField == null || textField.isBlank()) {
            throw new IllegalArgumentException("--text-field must name a field");
        }
    }

    /** 128, 256, … up to maxLen (maxLen itself last). */
    static List<Integer> powersOfTwo(int maxLen) {
        List<Integer> b = new ArrayList<>();
        for (int v = 128; v < maxLen; v *= 2) {
            b.add(v);
        }
        b.add(maxLen);
        return b;
    }
}
