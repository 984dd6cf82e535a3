package org.kindling.api;

import java.util.List;
import java.util.Map;
import org.kindling.data.PrepareJob;

/**
 * A prepared dataset: what {@link PrepareBuilder#run()} wrote, and what training and evaluation read.
 *
 * @param path the dataset directory (shards, tokenizer.json, rejects/, manifest.json)
 * @param documents documents kept
 * @param tokens tokens in the shards, end-of-text tokens included
 * @param rejects rejected inputs by reason, in name order (e.g. {@code empty}, {@code not_text}); their lines are in {@code path/rejects/}
 * @param shards the Arrow shards written, by path under {@code path}
 * @param vocabSize the tokenizer's vocabulary
 * @param inputBytes bytes of input read (file sizes, or the UTF-8 bytes of a DataFrame's texts)
 * @param seconds how long preparing took
 */
public record PreparedData(String path, long documents, long tokens, Map<String, Long> rejects, List<PrepareJob.ShardEntry> shards,
                           int vocabSize, long inputBytes, double seconds) {
    public PreparedData {
        rejects = java.util.Collections.unmodifiableMap(new java.util.TreeMap<>(rejects));
        shards = List.copyOf(shards);
    }

    /** Rejected inputs of every reason. */
    public long rejected() {
        return rejects.values().stream().mapToLong(Long::longValue).sum();
    }
}
