package org.kindling.data;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HexFormat;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * A byte-level BPE tokenizer, encoding exactly as Hugging Face tokenizers does for a
 * {@code tokenizer.json} with a BPE model, ByteLevel pre-tokenizer and decoder (GPT-2's scheme):
 * special tokens are split out first, the rest is pre-tokenized by GPT-2's pattern, each piece's
 * UTF-8 bytes become symbols, and merges apply lowest rank first. Immutable and thread-safe; it
 * has no Spark dependency (generation uses it too).
 */
public final class BpeTokenizer {
    /** GPT-2's end-of-text token, appended to every document. */
    public static final String END_OF_TEXT = "<|endoftext|>";
    private static final ObjectMapper JSON = new ObjectMapper();
    /** Pieces per cache generation (two generations per thread at most). */
    static final int CACHE_LIMIT = 1 << 17;

    private final Map<String, Integer> vocab;
    private final String[] tokens;
    /** (left id, right id) → rank in the high 32 bits, merged id in the low 32. */
    private final MergeTable mergeTable;
    /** Id of each single-byte symbol, or −1 if the vocabulary lacks it. */
    private final int[] byteIds = new int[512];
    private final List<String[]> merges;
    private final Map<String, Integer> specials;
    private final Pattern specialPattern;
    /** Per-thread piece → ids caches: a plain HashMap per thread beats one shared concurrent map. */
    private final ThreadLocal<PieceCache> cache = ThreadLocal.withInitial(PieceCache::new);

    BpeTokenizer(Map<String, Integer> vocab, List<String[]> merges, Map<String, Integer> specials) {
        this.vocab = Collections.unmodifiableMap(new LinkedHashMap<>(vocab));
        this.merges = List.copyOf(merges);
        this.specials = Collections.unmodifiableMap(new LinkedHashMap<>(specials));
        int size = 0;
        for (int id : vocab.values()) {
            size = Math.max(size, id + 1);
        }
        for (int id : specials.values()) {
            size = Math.max(size, id + 1);
        }
        this.tokens = new String[size];
        vocab.forEach((t, id) -> tokens[id] = t);
        specials.forEach((t, id) -> tokens[id] = t);
        MergeTable table = new MergeTable(merges.size());
        for (int i = 0; i < merges.size(); i++) {
            Integer a = vocab.get(merges.get(i)[0]);
            Integer b = vocab.get(merges.get(i)[1]);
            Integer merged = vocab.get(merges.get(i)[0] + merges.get(i)[1]);
            if (a != null && b != null && merged != null) {
                table.putIfAbsent(MergeTable.pair(a, b), ((long) i << 32) | merged);
            }
        }
        this.mergeTable = table;
        java.util.Arrays.fill(byteIds, -1);
        vocab.forEach((t, id) -> {
            if (t.length() == 1 && t.charAt(0) < byteIds.length) {
                byteIds[t.charAt(0)] = id;
            }
        });
        this.specialPattern = specials.isEmpty() ? null : Pattern.compile(specials.keySet().stream()
                .sorted((a, b) -> b.length() - a.length()).map(Pattern::quote).reduce((a, b) -> a + "|" + b).orElseThrow());
    }

    /** Ids run from 0 to vocabSize() − 1. */
    public int vocabSize() {
        return tokens.length;
    }

    /** The id of a special token such as {@link #END_OF_TEXT}, or −1. */
    public int specialId(String token) {
        return specials.getOrDefault(token, -1);
    }

    public int endOfText() {
        return specialId(END_OF_TEXT);
    }

    public Map<String, Integer> specials() {
        return specials;
    }

    public String token(int id) {
        return tokens[id];
    }

    /** Token ids of a text; special tokens written in the text become their ids. */
    public int[] encode(String text) {
        IntList out = new IntList(text.length() / 3 + 4);
        if (specialPattern == null) {
            encodeOrdinary(text, out);
            return out.toArray();
        }
        Matcher m = specialPattern.matcher(text);
        int last = 0;
        while (m.find()) {
            encodeOrdinary(text.substring(last, m.start()), out);
            out.add(specials.get(m.group()));
            last = m.end();
        }
        encodeOrdinary(text.substring(last), out);
        return out.toArray();
    }

    private void encodeOrdinary(String text, IntList out) {
        if (text.isEmpty()) {
            return;
        }
        PieceCache pieces = cache.get();
        Matcher m = ByteLevel.PRE_TOKENIZER.matcher(text);
        while (m.find()) {
            String piece = m.group();
            int[] ids = pieces.get(piece);
            if (ids == null) {
                ids = bpe(ByteLevel.toSymbols(piece));
                pieces.put(piece, ids);
            }
            out.addAll(ids);
        }
    }

    /**
     * A bounded piece cache in two generations: when the young map fills it becomes the old one and the previous old
     * one is dropped; a hit in the old map moves the piece back to the young. Frequent pieces survive a turnover, where
     * clearing one full map made every piece of a long-tailed corpus (more distinct pieces than the limit) run BPE again.
     */
    static final class PieceCache {
        private Map<String, int[]> young = new java.util.HashMap<>();
        private Map<String, int[]> old = Map.of();

        int[] get(String piece) {
            int[] ids = young.get(piece);
            if (ids == null) {
                ids = old.get(piece);
                if (ids != null) {
                    put(piece, ids);
                }
            }
            return ids;
        }

        void put(String piece, int[] ids) {
            if (young.size() >= CACHE_LIMIT) {
                old = young;
                young = new java.util.HashMap<>();
            }
            young.put(piece, ids);
        }

        int size() {
            return young.size() + old.size();
        }
    }

    /** Applies the merges to one pre-token's symbols, lowest rank first, leftmost first among equals. */
    private int[] bpe(String symbols) {
        int n = symbols.length();
        int[] ids = new int[n];
        for (int i = 0; i < n; i++) {
            char c = symbols.charAt(i);
            int id = c < byteIds.length ? byteIds[c] : -1;
            if (id < 0) {
                throw new IllegalStateException("byte symbol \"" + c + "\" is not in the vocabulary: the tokenizer lacks byte "
                        + "symbols its merges need");
            }
            ids[i] = id;
        }
        while (n > 1) {
            long best = Long.MAX_VALUE;
            for (int i = 0; i + 1 < n; i++) {
                long m = mergeTable.get(MergeTable.pair(ids[i], ids[i + 1]));
                if (m != MergeTable.ABSENT && m < best) {
                    best = m;
                }
            }
            if (best == Long.MAX_VALUE) {
                break;
            }
            int merged = (int) best;
            int rank = (int) (best >>> 32);
            int w = 0;
            for (int i = 0; i < n; i++) {
                if (i + 1 < n) {
                    long m = mergeTable.get(MergeTable.pair(ids[i], ids[i + 1]));
                    if (m != MergeTable.ABSENT && (int) (m >>> 32) == rank) {
                        ids[w++] = merged;
                        i++;
                        continue;
                    }
                }
                ids[w++] = ids[i];
            }
            n = w;
        }
        return java.util.Arrays.copyOf(ids, n);
    }

    /** The text of token ids; bytes that are not valid UTF-8 become U+FFFD, as in Hugging Face's decoder. */
    public String decode(int[] ids) {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        StringBuilder text = new StringBuilder();
        for (int id : ids) {
            if (id < 0 || id >= tokens.length || tokens[id] == null) {
                throw new IllegalArgumentException("token id " + id + " is not in the vocabulary of " + tokens.length);
            }
            String t = tokens[id];
            if (specials.containsKey(t) || !ByteLevel.appendBytes(t, bytes)) {
                text.append(bytes.toString(StandardCharsets.UTF_8));
                bytes.reset();
                text.append(t);
            }
        }
        return text.append(bytes.toString(StandardCharsets.UTF_8)).toString();
    }

    // ---- the tokenizer.json format ----

    /** Parses a Hugging Face tokenizer.json; {@code source} names it in errors. */
    public static BpeTokenizer fromJson(String json, String source) {
        JsonNode root;
        try {
            root = JSON.readTree(json);
        } catch (IOException e) {
            throw new IllegalArgumentException(source + ": not valid JSON: " + e.getMessage(), e);
        }
        JsonNode model = root == null ? null : root.get("model");
        if (model == null || !"BPE".equals(model.path("type").asText("BPE")) || !model.has("vocab") || !model.has("merges")) {
            throw new IllegalArgumentException(source + ": not a BPE tokenizer.json (needs model.type BPE with vocab and merges)");
        }
        String pre = root.path("pre_tokenizer").path("type").asText("");
        if (!pre.equals("ByteLevel") || root.path("pre_tokenizer").path("add_prefix_space").asBoolean(false)) {
            throw new IllegalArgumentException(source + ": pre_tokenizer must be ByteLevel without add_prefix_space, got "
                    + root.path("pre_tokenizer"));
        }
        if (!root.path("normalizer").isNull() && !root.path("normalizer").isMissingNode()) {
            throw new IllegalArgumentException(source + ": normalizers are not supported, got " + root.path("normalizer"));
        }
        Map<String, Integer> vocab = new LinkedHashMap<>();
        for (Iterator<Map.Entry<String, JsonNode>> it = model.get("vocab").fields(); it.hasNext(); ) {
            Map.Entry<String, JsonNode> e = it.next();
            if (!e.getValue().canConvertToInt() || e.getValue().asInt() < 0) {
                throw new IllegalArgumentException(source + ": vocab entry \"" + e.getKey() + "\" has id " + e.getValue());
            }
            vocab.put(e.getKey(), e.getValue().asInt());
        }
        List<String[]> merges = new ArrayList<>();
        for (JsonNode m : model.get("merges")) {
            String[] pair;
            if (m.isTextual()) {
                pair = m.asText().split(" ", -1);
            } else if (m.isArray() && m.size() == 2) {
                pair = new String[] {m.get(0).asText(), m.get(1).asText()};
            } else {
                pair = new String[0];
            }
            if (pair.length != 2 || !vocab.containsKey(pair[0] + pair[1])) {
                throw new IllegalArgumentException(source + ": merge " + m + " is not a pair whose result is in the vocab");
            }
            merges.add(pair);
        }
        Map<String, Integer> specials = new LinkedHashMap<>();
        for (JsonNode t : root.path("added_tokens")) {
            specials.put(t.path("content").asText(), t.path("id").asInt());
        }
        return new BpeTokenizer(vocab, merges, specials);
    }

    /** The tokenizer.json Hugging Face tokenizers (Python or Rust) loads unchanged. */
    public String toJson() {
        ObjectNode root = JSON.createObjectNode();
        root.put("version", "1.0");
        root.putNull("truncation");
        root.putNull("padding");
        ArrayNode added = root.putArray("added_tokens");
        specials.forEach((t, id) -> added.addObject().put("id", id).put("content", t).put("single_word", false)
                .put("lstrip", false).put("rstrip", false).put("normalized", false).put("special", true));
        root.putNull("normalizer");
        byteLevel(root.putObject("pre_tokenizer"), false, true);
        byteLevel(root.putObject("post_processor"), true, false);
        byteLevel(root.putObject("decoder"), true, true);
        ObjectNode model = root.putObject("model");
        model.put("type", "BPE");
        model.putNull("dropout");
        model.putNull("unk_token");
        model.put("continuing_subword_prefix", "");
        model.put("end_of_word_suffix", "");
        model.put("fuse_unk", false);
        model.put("byte_fallback", false);
        model.put("ignore_merges", false);
        ObjectNode v = model.putObject("vocab");
        vocab.forEach(v::put);
        ArrayNode m = model.putArray("merges");
        for (String[] pair : merges) {
            m.add(pair[0] + " " + pair[1]);
        }
        try {
            return JSON.writerWithDefaultPrettyPrinter().writeValueAsString(root);
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
    }

    private static void byteLevel(ObjectNode n, boolean addPrefixSpace, boolean trimOffsets) {
        n.put("type", "ByteLevel");
        n.put("add_prefix_space", addPrefixSpace);
        n.put("trim_offsets", trimOffsets);
        n.put("use_regex", true);
    }

    /** SHA-256 of the canonical tokenizer.json: identifies the tokenizer in shard metadata. */
    public String sha256() {
        try {
            byte[] d = MessageDigest.getInstance("SHA-256").digest(toJson().getBytes(StandardCharsets.UTF_8));
            return HexFormat.of().formatHex(d);
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }

    /** A growable int array. */
    private static final class IntList {
        private int[] a;
        private int n;

        IntList(int capacity) {
            a = new int[Math.max(4, capacity)];
        }

        void add(int v) {
            if (n == a.length) {
                a = java.util.Arrays.copyOf(a, a.length * 2);
            }
            a[n++] = v;
        }

        void addAll(int[] vs) {
            if (n + vs.length > a.length) {
                a = java.util.Arrays.copyOf(a, Math.max(a.length * 2, n + vs.length));
            }
            System.arraycopy(vs, 0, a, n, vs.length);
            n += vs.length;
        }

        int[] toArray() {
            return java.util.Arrays.copyOf(a, n);
        }
    }
}
