package org.kindling.data;

import java.util.List;
import java.util.Map;
import org.apache.arrow.vector.types.pojo.ArrowType;
import org.apache.arrow.vector.types.pojo.Field;
import org.apache.arrow.vector.types.pojo.FieldType;
import org.apache.arrow.vector.types.pojo.Schema;

/**
 * The shard format: an Arrow IPC file of documents, one length bucket per file. Column
 * {@code tokens: List<Int32>} holds each document's token ids (the list offsets are exactly
 * FlashAttention's {@code cu_seqlens}); {@code doc_id: Int64} names the source document. The
 * schema metadata says which tokenizer made the ids and which bucket the file holds.
 */
public final class Shard {
    public static final int FORMAT_VERSION = 1;
    public static final String TOKENS = "tokens";
    public static final String DOC_ID = "doc_id";
    public static final String META_FORMAT = "kindling.format_version";
    public static final String META_TOKENIZER = "kindling.tokenizer_sha256";
    public static final String META_VOCAB = "kindling.vocab_size";
    public static final String META_SPECIALS = "kindling.special_tokens";
    public static final String META_BUCKET_MIN = "kindling.bucket_min";
    public static final String META_BUCKET_MAX = "kindling.bucket_max";

    private Shard() {
    }

    /** Facts every shard of a dataset records. */
    public record Info(String tokenizerSha256, int vocabSize, String specialTokensJson, int bucketMin, int bucketMax)
            implements java.io.Serializable {
        public Map<String, String> metadata() {
            // Sorted: the schema keeps this order in the file, and Map.of's order changes from one JVM to the next, so
            // shards of the same input differed between runs.
            return java.util.Collections.unmodifiableMap(new java.util.TreeMap<>(Map.of(META_FORMAT, String.valueOf(FORMAT_VERSION),
                    META_TOKENIZER, tokenizerSha256, META_VOCAB, String.valueOf(vocabSize), META_SPECIALS, specialTokensJson,
                    META_BUCKET_MIN, String.valueOf(bucketMin), META_BUCKET_MAX, String.valueOf(bucketMax))));
        }

        /** Reads the metadata back, naming the file and the key that is missing or wrong. */
        public static Info fromMetadata(Map<String, String> m, String source) {
            String version = m == null ? null : m.get(META_FORMAT);
            if (version == null) {
                throw new IllegalArgumentException(source + ": not a Kindling shard (no " + META_FORMAT + " in the schema metadata)");
            }
            if (!version.equals(String.valueOf(FORMAT_VERSION))) {
                throw new IllegalArgumentException(source + ": shard format version " + version + " is not the supported "
                        + FORMAT_VERSION);
            }
            try {
                return new Info(require(m, META_TOKENIZER, source), Integer.parseInt(require(m, META_VOCAB, source)),
                        require(m, META_SPECIALS, source), Integer.parseInt(require(m, META_BUCKET_MIN, source)),
                        Integer.parseInt(require(m, META_BUCKET_MAX, source)));
            } catch (NumberFormatException e) {
                throw new IllegalArgumentException(source + ": a numeric shard metadata entry is not a number: " + e.getMessage(), e);
            }
        }

        private static String require(Map<String, String> m, String key, String source) {
            String v = m.get(key);
            if (v == null) {
                throw new IllegalArgumentException(source + ": shard metadata lacks " + key);
            }
            return v;
        }
    }

    static Schema schema(Info info) {
        Field item = new Field("item", FieldType.notNullable(new ArrowType.Int(32, true)), null);
        Field tokens = new Field(TOKENS, FieldType.notNullable(new ArrowType.List()), List.of(item));
        Field docId = new Field(DOC_ID, FieldType.notNullable(new ArrowType.Int(64, true)), null);
        return new Schema(List.of(tokens, docId), info.metadata());
    }
}
