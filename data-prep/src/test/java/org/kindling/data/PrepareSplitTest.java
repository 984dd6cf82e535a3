package org.kindling.data;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.stream.Stream;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.util.SerializableConfiguration;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Line-delimited files read as byte ranges by several tasks give the dataset the unsplit job gives, byte for byte. */
class PrepareSplitTest {
    static SparkSession spark;
    @TempDir
    static Path dir;
    static Path corpus;
    /** The 1-based line of lines.txt that is not UTF-8. */
    static int badLine;

    @BeforeAll
    static void start() throws IOException {
        spark = SparkSession.builder().master("local[2]").appName("prepare-split-test").config("spark.ui.enabled", "false")
                .config("spark.sql.shuffle.partitions", "4").getOrCreate();
        corpus = Files.createDirectories(dir.resolve("corpus"));
        Random random = new Random(15);
        String[] words = {"the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "café", "中文", "🎉", "12345"};
        ByteArrayOutputStream text = new ByteArrayOutputStream();
        ByteArrayOutputStream jsonl = new ByteArrayOutputStream();
        for (int i = 1; i <= 120; i++) {
            // Lines from empty to ~2.5 KiB, so 1 KiB ranges start inside lines, at their starts and inside "\r\n".
            StringBuilder line = new StringBuilder();
            int n = i % 17 == 0 ? 400 : i % 11 == 0 ? 0 : 1 + random.nextInt(30);
            for (int w = 0; w < n; w++) {
                line.append(words[random.nextInt(words.length)]).append(' ');
            }
            if (i % 13 == 0) {
                line.setLength(0);
                line.append("a line that repeats"); // dedup keeps the lowest id: ids must not depend on the ranges
            }
            String end = i % 3 == 0 ? "\r\n" : "\n";
            if (i == 50) {
                badLine = i;
                text.write(new byte[] {'o', 'k', (byte) 0xC3, (byte) 0x28, 'x'});
            } else {
                text.write((i % 40 == 0 ? line + line.toString() : line.toString()).getBytes(StandardCharsets.UTF_8));
            }
            text.write(end.getBytes(StandardCharsets.UTF_8));
            String json = i % 23 == 0 ? "{not json" : i % 29 == 0 ? "{\"other\": 1}" : new ObjectMapper().createObjectNode()
                    .put("text", "doc " + (i % 7 == 0 ? 7 : i) + " " + line).toString();
            jsonl.write((json + end).getBytes(StandardCharsets.UTF_8));
        }
        text.write("the last line, without a newline".getBytes(StandardCharsets.UTF_8));
        Files.write(corpus.resolve("lines.txt"), text.toByteArray());
        Files.write(corpus.resolve("docs.jsonl"), jsonl.toByteArray());
        Files.writeString(corpus.resolve("small.txt"), "a small file\r\nread whole\n");
    }

    @AfterAll
    static void stop() {
        spark.stop();
    }

    static PrepareOptions options(Path out, boolean lineDocs) {
        return new PrepareOptions(List.of(corpus.toString()), out.toString(), null, lineDocs, "text", null, 300, 64,
                List.of(16, 32, 64), true, 1500, false);
    }

    /** Prepares with {@link LineRanges#SPLIT_BYTES} set to {@code split}, passing the progress lines to {@code lines}. */
    static PrepareJob.Result prepare(PrepareOptions opt, String split, List<String> lines) throws IOException {
        spark.conf().set(LineRanges.SPLIT_BYTES, split);
        spark.conf().set(PrepareProgress.INTERVAL, "20ms");
        try {
            return PrepareJob.run(spark, opt, lines::add);
        } finally {
            spark.conf().unset(LineRanges.SPLIT_BYTES);
            spark.conf().unset(PrepareProgress.INTERVAL);
        }
    }

    /** Every file of a dataset by its path inside it. */
    static Map<String, byte[]> files(Path out) throws IOException {
        Map<String, byte[]> all = new LinkedHashMap<>();
        try (Stream<Path> s = Files.walk(out)) {
            for (Path p : s.filter(Files::isRegularFile).filter(p -> !p.getFileName().toString().startsWith(".")).sorted().toList()) {
                all.put(out.relativize(p).toString(), Files.readAllBytes(p));
            }
        }
        return all;
    }

    @Test
    void splitRangesGiveTheUnsplitDatasetByteForByte() throws IOException {
        Path whole = dir.resolve("whole");
        PrepareJob.Result w = prepare(options(whole, true), "64m", new ArrayList<>());
        assertTrue(w.rejects().keySet().containsAll(List.of("invalid_utf8", "empty", "invalid_json", "missing_field", "duplicate",
                "too_large")), w.rejects().toString());
        Map<String, byte[]> expected = files(whole);
        for (String split : List.of("1k", "37b")) {
            Path out = dir.resolve("split-" + split);
            List<String> lines = Collections.synchronizedList(new ArrayList<>());
            PrepareJob.Result r = prepare(options(out, true), split, lines);
            assertEquals(w.documents(), r.documents());
            assertEquals(w.rejects(), r.rejects());
            Map<String, byte[]> got = files(out);
            assertEquals(expected.keySet(), got.keySet(), "split " + split);
            expected.forEach((path, bytes) -> assertArrayEquals(bytes, got.get(path), path + " with split " + split));
            String total = String.format(java.util.Locale.ROOT, "%,d", r.inputBytes());
            assertTrue(lines.stream().limit(lines.size() - 1).anyMatch(l -> l.startsWith("prepare: 3/3 files | " + total + "/" + total)),
                    "the ranges' reports add up to every file and byte before the end line: " + lines);
        }
        // The reject names its file and its line in the whole file, not in its range.
        JsonNode bad = null;
        try (Stream<Path> s = Files.list(dir.resolve("split-37b/rejects"))) {
            for (Path p : s.filter(p -> p.toString().endsWith(".jsonl")).toList()) {
                for (String l : Files.readAllLines(p)) {
                    JsonNode n = new ObjectMapper().readTree(l);
                    if (n.get("reason").asText().equals("invalid_utf8")) {
                        bad = n;
                    }
                }
            }
        }
        assertTrue(bad != null && bad.get("source").asText().endsWith("lines.txt"), String.valueOf(bad));
        assertEquals(badLine, bad.get("line").asInt());
    }

    @Test
    void largeLineFilesAreCountedIntoRangesAndDocumentFilesStayWhole() throws IOException {
        JavaSparkContext sc = JavaSparkContext.fromSparkContext(spark.sparkContext());
        List<String> files = PrepareJob.listInputs(List.of(corpus.toString()), sc.hadoopConfiguration());
        Map<String, Integer> index = new LinkedHashMap<>();
        Map<String, Long> sizes = new LinkedHashMap<>();
        for (String f : files) {
            index.put(f, index.size());
            sizes.put(f, Files.size(Path.of(java.net.URI.create(f))));
        }
        var hadoop = sc.broadcast(new SerializableConfiguration(sc.hadoopConfiguration()));
        List<LineRanges.Range> ranges = PrepareJob.ranges(sc, options(dir.resolve("unused"), true), files, index, sizes, 1024, hadoop);
        String lines = files.stream().filter(f -> f.endsWith("lines.txt")).findFirst().orElseThrow();
        List<LineRanges.Range> ofLines = ranges.stream().filter(r -> r.file().equals(lines)).toList();
        assertEquals((sizes.get(lines) + 1023) / 1024, ofLines.size());
        long next = 0;
        for (LineRanges.Range r : ofLines) {
            assertEquals(next, r.firstLine(), "each range starts at the line after the previous range's last");
            next += r.lines();
        }
        assertEquals(121, next, "120 lines and a last one without a newline");
        assertTrue(ranges.stream().anyMatch(r -> r.file().endsWith("small.txt") && r.whole()));
        List<LineRanges.Range> documents = PrepareJob.ranges(sc, options(dir.resolve("unused"), false), files, index, sizes, 1024,
                hadoop);
        assertTrue(documents.stream().filter(r -> r.file().endsWith(".txt")).allMatch(LineRanges.Range::whole),
                "a text file that is one document is never split: " + documents);
        assertTrue(documents.stream().anyMatch(r -> r.file().endsWith("docs.jsonl") && !r.whole()), documents.toString());
    }
}
