package org.kindling.data;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.channels.SeekableByteChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import org.apache.arrow.memory.RootAllocator;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class PrepareJobTest {
    static SparkSession spark;
    @TempDir
    static Path dir;
    static Path corpus;

    @BeforeAll
    static void start() throws IOException {
        spark = SparkSession.builder().master("local[2]").appName("prepare-test").config("spark.ui.enabled", "false")
                .config("spark.sql.shuffle.partitions", "4").getOrCreate();
        corpus = dir.resolve("corpus");
        Files.createDirectories(corpus.resolve("sub"));
        Files.writeString(corpus.resolve("a.txt"), "The quick brown fox jumps over the lazy dog. ".repeat(40));
        Files.writeString(corpus.resolve("b.txt"), "Emoji 🎉 and 中文 text, with numbers 12345.\nSecond line.");
        Files.writeString(corpus.resolve("sub/c.txt"), "The quick brown fox jumps over the lazy dog. ".repeat(40));
        Files.write(corpus.resolve("bad.txt"), new byte[] {'o', 'k', (byte) 0xC3, (byte) 0x28, 'x'});
        Files.writeString(corpus.resolve("empty.txt"), "   \n\t ");
        Files.writeString(corpus.resolve("big.txt"), "x".repeat(5000));
        Files.writeString(corpus.resolve("docs.jsonl"), "{\"text\": \"json document one\"}\n{\"text\": 5}\nnot json\n"
                + "{\"other\": \"no text field\"}\n{\"text\": \"json document two, a bit longer than one\"}\n");
    }

    @AfterAll
    static void stop() {
        spark.stop();
    }

    static PrepareOptions options(Path out, String tokenizer, boolean dedup, boolean overwrite) {
        return new PrepareOptions(List.of(corpus.toString()), out.toString(), null, false, "text", tokenizer, 300, 64,
                List.of(16, 32, 64), dedup, 4096, overwrite);
    }

    static JsonNode manifest(Path out) throws IOException {
        return new ObjectMapper().readTree(out.resolve("manifest.json").toFile());
    }

    /**
     * Every document of a dataset: doc id → its tokens. A split document's chunks are all max_len
     * long but the last, which may sit in a smaller bucket: full chunks (in file order) come first.
     */
    static Map<Long, List<Integer>> read(Path out) throws IOException {
        Map<Long, List<List<Integer>>> chunks = new HashMap<>();
        int maxLen = manifest(out).get("options").get("max_len").asInt();
        try (RootAllocator allocator = new RootAllocator()) {
            for (JsonNode s : manifest(out).get("shards")) {
                Path f = out.resolve(s.get("path").asText());
                try (SeekableByteChannel ch = Files.newByteChannel(f); ShardReader r = new ShardReader(ch, allocator, f.toString())) {
                    assertEquals(s.get("bucket").asInt(), r.info().bucketMax());
                    long rows = 0;
                    for (int b = 0; b < r.batches(); b++) {
                        ShardReader.Batch batch = r.read(b);
                        for (int d = 0; d < batch.documents(); d++) {
                            int len = batch.offsets()[d + 1] - batch.offsets()[d];
                            assertTrue(len >= r.info().bucketMin() && len <= r.info().bucketMax(), "length " + len + " in " + f);
                            List<Integer> chunk = new ArrayList<>();
                            for (int i = batch.offsets()[d]; i < batch.offsets()[d + 1]; i++) {
                                chunk.add(batch.tokens()[i]);
                            }
                            chunks.computeIfAbsent(batch.docIds()[d], k -> new ArrayList<>()).add(chunk);
                            rows++;
                        }
                    }
                    assertEquals(s.get("rows").asLong(), rows);
                }
            }
        }
        Map<Long, List<Integer>> docs = new HashMap<>();
        chunks.forEach((id, list) -> {
            List<Integer> all = new ArrayList<>();
            list.stream().filter(c -> c.size() == maxLen).forEach(all::addAll);
            list.stream().filter(c -> c.size() != maxLen).forEach(all::addAll);
            docs.put(id, all);
        });
        return docs;
    }

    @Test
    void preparesTokenizesBucketsAndReportsRejects() throws IOException {
        Path out = dir.resolve("ds");
        PrepareJob.Result result = PrepareJob.run(spark, options(out, null, true, false));
        JsonNode m = manifest(out);
        assertEquals(1, m.get("format_version").asInt());
        JsonNode rejects = m.get("rejects");
        assertEquals(1, rejects.get("invalid_utf8").asInt());
        assertEquals(1, rejects.get("empty").asInt());
        assertEquals(1, rejects.get("too_large").asInt());
        assertEquals(1, rejects.get("invalid_json").asInt());
        assertEquals(1, rejects.get("missing_field").asInt());
        assertEquals(1, rejects.get("not_text").asInt());
        assertEquals(1, rejects.get("duplicate").asInt(), "c.txt repeats a.txt");
        assertEquals(4, m.get("documents").asInt(), "a, b, and the two JSON documents");
        assertEquals(result.tokens(), m.get("tokens").asLong());
        BpeTokenizer tok = BpeTokenizer.fromJson(Files.readString(out.resolve("tokenizer.json")), "tokenizer.json");
        assertEquals(300, tok.vocabSize());
        assertEquals(tok.sha256(), m.get("tokenizer").get("sha256").asText());
        Map<Long, List<Integer>> docs = read(out);
        assertEquals(4, docs.size());
        List<String> texts = new ArrayList<>();
        long total = 0;
        for (List<Integer> ids : docs.values()) {
            int[] a = ids.stream().mapToInt(Integer::intValue).toArray();
            assertEquals(tok.endOfText(), a[a.length - 1], "every document ends with end-of-text");
            texts.add(tok.decode(java.util.Arrays.copyOf(a, a.length - 1)));
            total += a.length;
        }
        assertEquals(total, m.get("tokens").asLong());
        assertTrue(texts.contains("Emoji 🎉 and 中文 text, with numbers 12345.\nSecond line."), texts.toString());
        assertTrue(texts.contains("json document one"), texts.toString());
        List<String> rejectLines = new ArrayList<>();
        try (Stream<Path> parts = Files.list(out.resolve("rejects"))) {
            for (Path p : parts.filter(p -> p.getFileName().toString().startsWith("part-")).sorted().toList()) {
                rejectLines.addAll(Files.readAllLines(p));
            }
        }
        assertEquals(7, rejectLines.size());
        assertTrue(rejectLines.stream().anyMatch(l -> l.contains("\"invalid_utf8\"") && l.contains("bad.txt")), rejectLines.toString());
        assertTrue(rejectLines.stream().anyMatch(l -> l.contains("\"invalid_json\"") && l.contains("\"line\":3")), rejectLines.toString());
    }

    @Test
    void sameInputGivesByteIdenticalDatasetsAndAGivenTokenizerIsUsed() throws IOException {
        Path a = dir.resolve("run-a");
        Path b = dir.resolve("run-b");
        PrepareJob.run(spark, options(a, null, false, false));
        PrepareJob.run(spark, options(b, a.resolve("tokenizer.json").toString(), false, false));
        JsonNode ma = manifest(a);
        JsonNode mb = manifest(b);
        assertEquals(ma.get("shards"), mb.get("shards"));
        assertEquals(ma.get("tokenizer"), mb.get("tokenizer"));
        for (JsonNode s : ma.get("shards")) {
            String p = s.get("path").asText();
            assertArrayEquals(Files.readAllBytes(a.resolve(p)), Files.readAllBytes(b.resolve(p)), p);
        }
        assertEquals(0, ma.get("rejects").path("duplicate").asInt(), "no dedup asked for");
        assertEquals(5, ma.get("documents").asInt());
    }

    @Test
    void refusesToOverwriteUnlessAsked() throws IOException {
        Path out = dir.resolve("twice");
        PrepareJob.run(spark, options(out, null, false, false));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> PrepareJob.run(spark, options(out, null, false, false)));
        assertTrue(e.getMessage().contains("--overwrite"), e.getMessage());
        PrepareJob.run(spark, options(out, null, false, true));
        assertTrue(Files.exists(out.resolve("manifest.json")));
    }

    @Test
    void longDocumentsAreSplitAtMaxLen() throws IOException {
        Path in = dir.resolve("long");
        Files.createDirectories(in);
        Files.writeString(in.resolve("l.txt"), "word ".repeat(500));
        Path out = dir.resolve("long-out");
        PrepareJob.run(spark, new PrepareOptions(List.of(in.toString()), out.toString(), PrepareOptions.Format.TEXT, false, "text",
                null, 260, 64, null, false, 1 << 20, false));
        JsonNode m = manifest(out);
        assertEquals(List.of(64), new ObjectMapper().convertValue(m.get("options").get("buckets"), List.class));
        Map<Long, List<Integer>> docs = read(out);
        assertEquals(1, docs.size());
        int chunks = 0;
        for (JsonNode s : m.get("shards")) {
            chunks += s.get("rows").asInt();
        }
        assertTrue(chunks > 1, "a long document becomes several chunks of at most 64 tokens");
        BpeTokenizer tok = BpeTokenizer.fromJson(Files.readString(out.resolve("tokenizer.json")), "t");
        int[] ids = docs.values().iterator().next().stream().mapToInt(Integer::intValue).toArray();
        assertEquals("word ".repeat(500), tok.decode(java.util.Arrays.copyOf(ids, ids.length - 1)));
    }

    @Test
    void readsParquetTextColumns() throws IOException {
        Path pq = dir.resolve("pq");
        List<org.apache.spark.sql.Row> rows = List.of(org.apache.spark.sql.RowFactory.create("parquet document one", 1),
                org.apache.spark.sql.RowFactory.create("  ", 2), org.apache.spark.sql.RowFactory.create(null, 3),
                org.apache.spark.sql.RowFactory.create("parquet document two", 4));
        org.apache.spark.sql.types.StructType schema = new org.apache.spark.sql.types.StructType()
                .add("body", org.apache.spark.sql.types.DataTypes.StringType).add("n", org.apache.spark.sql.types.DataTypes.IntegerType);
        spark.createDataFrame(rows, schema).coalesce(1).write().parquet(pq.toString());
        Path out = dir.resolve("pq-out");
        PrepareJob.Result r = PrepareJob.run(spark, new PrepareOptions(List.of(pq.toString()), out.toString(), null, false, "body",
                null, 280, 64, null, false, 4096, false));
        assertEquals(2, r.documents());
        assertEquals(1L, r.rejects().get("empty"));
        assertEquals(1L, r.rejects().get("missing_field"));
        BpeTokenizer tok = BpeTokenizer.fromJson(Files.readString(out.resolve("tokenizer.json")), "t");
        List<String> texts = new ArrayList<>();
        for (List<Integer> ids : read(out).values()) {
            int[] a = ids.stream().mapToInt(Integer::intValue).toArray();
            texts.add(tok.decode(java.util.Arrays.copyOf(a, a.length - 1)));
        }
        texts.sort(null);
        assertEquals(List.of("parquet document one", "parquet document two"), texts);
    }

    @Test
    void preparesADataFrameColumnAndReportsNullAndNonTextValuesAsRejects() throws IOException {
        org.apache.spark.sql.types.StructType schema = new org.apache.spark.sql.types.StructType()
                .add("text", org.apache.spark.sql.types.DataTypes.StringType).add("n", org.apache.spark.sql.types.DataTypes.IntegerType);
        List<org.apache.spark.sql.Row> rows = List.of(org.apache.spark.sql.RowFactory.create("frame document one", 1),
                org.apache.spark.sql.RowFactory.create(null, 2), org.apache.spark.sql.RowFactory.create("frame document two", 3));
        org.apache.spark.sql.Dataset<org.apache.spark.sql.Row> frame = spark.createDataFrame(rows, schema);
        Path out = dir.resolve("frame-out");
        PrepareJob.Result r = PrepareJob.run(spark, frame, new PrepareOptions(List.of("frame"), out.toString(), null, false, "text",
                null, 280, 64, null, false, 4096, false));
        assertEquals(2, r.documents());
        assertEquals(java.util.Map.of("missing_field", 1L), r.rejects());
        assertEquals("frame document one".length() + "frame document two".length(), r.inputBytes());
        JsonNode reject = new ObjectMapper().readTree(Files.readAllLines(rejectFile(out)).get(0));
        assertEquals("missing_field", reject.get("reason").asText());
        assertEquals("frame", reject.get("source").asText());
        assertEquals(1, reject.get("line").asLong());
        assertEquals(2, manifest(out).get("documents").asLong());

        // A column that holds numbers: every row is a reject that says why, none is dropped silently.
        Path nums = dir.resolve("frame-nums");
        PrepareJob.Result n = PrepareJob.run(spark, frame, new PrepareOptions(List.of("frame"), nums.toString(), null, false, "n",
                dir.resolve("frame-out/tokenizer.json").toString(), 280, 64, null, false, 4096, false));
        assertEquals(0, n.documents());
        assertEquals(java.util.Map.of("not_text", 3L), n.rejects());

        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> PrepareJob.run(spark, frame,
                new PrepareOptions(List.of("frame"), dir.resolve("frame-x").toString(), null, false, "body", null, 280, 64, null, false,
                        4096, false)));
        assertTrue(e.getMessage().contains("no column \"body\""), e.getMessage());
    }

    private static Path rejectFile(Path out) throws IOException {
        try (var s = Files.list(out.resolve("rejects"))) {
            return s.filter(p -> p.toString().endsWith(".jsonl")).findFirst().orElseThrow();
        }
    }

    @Test
    void aFileThatCannotBeReadBecomesAnUnreadableReject() {
        // Listed, then gone (or corrupt on disk) by the time a task reads it.
        String lost = dir.resolve("listed-then-lost.txt").toUri().toString();
        List<PrepareJob.Doc> docs = PrepareJob.readFile(lost, 7, PrepareOptions.Format.TEXT, true, "text", 100,
                new org.apache.hadoop.conf.Configuration());
        assertEquals(1, docs.size());
        assertEquals("unreadable", docs.get(0).reason());
        assertEquals(7L << 32, docs.get(0).id());
        assertEquals(lost, docs.get(0).source());
    }

    @Test
    void badOptionsNameTheOption() {
        assertThrows(IllegalArgumentException.class, () -> new PrepareOptions(List.of(), "o", null, false, "text", null, 300, 64, null,
                false, 10, false));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> new PrepareOptions(List.of("i"), "o", null,
                false, "text", null, 300, 64, List.of(32, 16, 64), false, 10, false));
        assertTrue(e.getMessage().contains("--buckets"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> PrepareJob.run(spark, new PrepareOptions(List.of(dir.resolve("nope")
                .toString()), dir.resolve("x").toString(), null, false, "text", null, 300, 64, null, false, 10, false)));
        assertTrue(e.getMessage().contains("does not exist"), e.getMessage());
    }

    @Test
    void packedChunksRoundTripEveryIdWidthAndAppendEndOfText() {
        java.util.Random rnd = new java.util.Random(7);
        for (int trial = 0; trial < 200; trial++) {
            int[] ids = new int[rnd.nextInt(40)];
            for (int i = 0; i < ids.length; i++) {
                // ids of 1 to 5 varint bytes, the extremes included
                ids[i] = switch (rnd.nextInt(4)) {
                    case 0 -> rnd.nextInt(128);
                    case 1 -> rnd.nextInt(1 << 14);
                    case 2 -> rnd.nextInt(Integer.MAX_VALUE);
                    default -> rnd.nextBoolean() ? 0 : Integer.MAX_VALUE;
                };
            }
            int eot = rnd.nextInt(1 << 20);
            int from = rnd.nextInt(ids.length + 1);
            int to = from + rnd.nextInt(ids.length + 2 - from);
            int[] expected = new int[to - from];
            for (int p = from; p < to; p++) {
                expected[p - from] = p < ids.length ? ids[p] : eot;
            }
            int[] into = new int[expected.length + 3];
            int n = PrepareJob.unpackChunk(PrepareJob.packChunk(ids, eot, from, to), into);
            assertArrayEquals(expected, java.util.Arrays.copyOf(into, n));
        }
    }

    @Test
    void documentTellsAWrittenReplacementCharacterFromInvalidUtf8() {
        byte[] written = "ok \uFFFD fine".getBytes(java.nio.charset.StandardCharsets.UTF_8);
        assertEquals("ok \uFFFD fine", PrepareJob.document(1, "f", 1, written, 1000).text());
        for (byte[] bad : List.of(new byte[] {'a', (byte) 0xC3}, new byte[] {(byte) 0xED, (byte) 0xA0, (byte) 0x80},
                new byte[] {'x', (byte) 0xFF, 'y'}, new byte[] {(byte) 0xEF, (byte) 0xBF, (byte) 0xBD, (byte) 0x80})) {
            assertEquals("invalid_utf8", PrepareJob.document(1, "f", 1, bad, 1000).reason());
        }
        assertEquals("h\u00e9llo \uD83D\uDE00", PrepareJob.document(1, "f", 1,
                "h\u00e9llo \uD83D\uDE00".getBytes(java.nio.charset.StandardCharsets.UTF_8), 1000).text());
    }
}
