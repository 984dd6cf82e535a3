package org.kindling.data;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Prepare's progress lines: files and bytes read as tasks report them, monotone, all of them at the end. */
class PrepareProgressTest {
    private static final Pattern LINE = Pattern.compile(
            "prepare: ([\\d,]+)/([\\d,]+) files \\| ([\\d,]+)/([\\d,]+) bytes \\((\\d+)%\\) \\| [\\d.]+ MB/s \\| ETA (\\d+m\\d\\ds|unknown)( \\| all input read; encoding and writing shards)?");
    private static final Pattern FRAME_LINE = Pattern.compile(
            "prepare: ([\\d,]+)/([\\d,]+) partitions \\| ([\\d,]+) rows \\| ([\\d,]+) bytes \\| [\\d.]+ MB/s \\| ETA (\\d+m\\d\\ds|unknown)( \\| all input read; encoding and writing shards)?");
    static SparkSession spark;
    @TempDir
    static Path dir;

    @BeforeAll
    static void start() {
        spark = SparkSession.builder().master("local[2]").appName("prepare-progress-test").config("spark.ui.enabled", "false")
                .config("spark.sql.shuffle.partitions", "4").getOrCreate();
    }

    @AfterAll
    static void stop() {
        spark.stop();
    }

    private static long number(Matcher m, int group) {
        return Long.parseLong(m.group(group).replace(",", ""));
    }

    @Test
    void linesAppearAtTheIntervalCountUpAndEndWithEveryFileAndByte() throws IOException {
        Path corpus = Files.createDirectories(dir.resolve("corpus"));
        long total = 0;
        for (int f = 0; f < 12; f++) {
            String text = ("document " + f + " says hello to the progress line. ").repeat(50 + 40 * f);
            Files.writeString(corpus.resolve("f" + f + ".txt"), text);
            total += text.length();
        }
        List<String> lines = Collections.synchronizedList(new ArrayList<>());
        spark.conf().set(PrepareProgress.INTERVAL, "20ms");
        try {
            PrepareJob.run(spark, new PrepareOptions(List.of(corpus.toString()), dir.resolve("out").toString(), null, false, "text", null,
                    300, 64, List.of(16, 32, 64), false, 1 << 20, false), lines::add);
        } finally {
            spark.conf().unset(PrepareProgress.INTERVAL);
        }
        List<String> seen = List.copyOf(lines);
        assertTrue(seen.size() >= 3, "lines every 20 ms of a run that takes seconds: " + seen);
        long files = 0;
        long bytes = 0;
        for (String line : seen) {
            Matcher m = LINE.matcher(line);
            assertTrue(m.matches(), line);
            assertEquals(12, number(m, 2));
            assertEquals(total, number(m, 4));
            assertTrue(number(m, 1) >= files && number(m, 3) >= bytes, "counts never go down: " + seen);
            files = number(m, 1);
            bytes = number(m, 3);
        }
        Matcher last = LINE.matcher(seen.get(seen.size() - 1));
        assertTrue(last.matches());
        assertEquals(12, number(last, 1));
        assertEquals(total, number(last, 3));
        assertEquals("100", last.group(5));
        assertEquals("0m00s", last.group(6));
        assertEquals(null, last.group(7), "the last line is the end: " + last.group());
        assertTrue(seen.stream().limit(seen.size() - 1).anyMatch(l -> l.startsWith("prepare: 12/12 files")),
                "the tasks' reports reach every file before the end line: " + seen);
    }

    @Test
    void eachReadCountsOnceAndSplitsAddUpToTheirFile() {
        try (PrepareProgress p = new PrepareProgress(spark.sparkContext(), 3_600_000, Map.of("a.txt", 1000L, "b.parquet", 3000L),
                l -> { })) {
            assertTrue(p.line(false).startsWith("prepare: 0/2 files | 0/4,000 bytes (0%) |"), p.line(false));
            assertTrue(p.line(false).endsWith("| ETA unknown"), p.line(false));
            p.reads().add(PrepareProgress.Read.whole("a.txt"));
            p.reads().add(PrepareProgress.Read.whole("a.txt")); // a retried task reports again
            p.reads().add(new PrepareProgress.Read("b.parquet", 0, 2000));
            p.reads().add(new PrepareProgress.Read("b.parquet", 0, 2000));
            assertTrue(p.line(false).startsWith("prepare: 1/2 files | 3,000/4,000 bytes (75%) |"), p.line(false));
            p.reads().add(new PrepareProgress.Read("b.parquet", 2000, 1000));
            assertTrue(p.line(false).startsWith("prepare: 2/2 files | 4,000/4,000 bytes (100%) |"), p.line(false));
            assertTrue(p.line(false).endsWith("| ETA 0m00s | all input read; encoding and writing shards"), p.line(false));
        }
    }

    @Test
    void aDataFramePrepareGivesPartitionLinesThatCountUpToEveryPartitionAndItsUtf8Bytes() throws IOException {
        List<Row> rows = new ArrayList<>();
        long utf8 = 0;
        for (int i = 0; i < 600; i++) {
            // Accents and a check mark: UTF-8 bytes, not chars, are what the lines and inputBytes count.
            String text = i % 50 == 7 ? null : ("ligne " + i + " dit café ✓ à la progression. ").repeat(1 + i % 9);
            rows.add(RowFactory.create(text));
            utf8 += text == null ? 0 : text.getBytes(StandardCharsets.UTF_8).length;
        }
        Dataset<Row> frame = spark.createDataFrame(JavaSparkContext.fromSparkContext(spark.sparkContext()).parallelize(rows, 12),
                new StructType().add("text", DataTypes.StringType));
        List<String> lines = Collections.synchronizedList(new ArrayList<>());
        spark.conf().set(PrepareProgress.INTERVAL, "20ms");
        PrepareJob.Result r;
        try {
            r = PrepareJob.run(spark, frame, new PrepareOptions(List.of("frame"), dir.resolve("frame-out").toString(), null, false, "text",
                    null, 300, 64, List.of(16, 32, 64), false, 1 << 20, false), lines::add);
        } finally {
            spark.conf().unset(PrepareProgress.INTERVAL);
        }
        assertEquals(utf8, r.inputBytes());
        List<String> seen = List.copyOf(lines);
        assertTrue(seen.size() >= 3, "lines every 20 ms of a run that takes seconds: " + seen);
        long parts = 0;
        long rowsRead = 0;
        long bytes = 0;
        for (String line : seen) {
            Matcher m = FRAME_LINE.matcher(line);
            assertTrue(m.matches(), line);
            assertEquals(12, number(m, 2));
            assertTrue(number(m, 1) >= parts && number(m, 3) >= rowsRead && number(m, 4) >= bytes, "counts never go down: " + seen);
            parts = number(m, 1);
            rowsRead = number(m, 3);
            bytes = number(m, 4);
        }
        Matcher last = FRAME_LINE.matcher(seen.get(seen.size() - 1));
        assertTrue(last.matches());
        assertEquals(12, number(last, 1));
        assertEquals(600, number(last, 3));
        assertEquals(utf8, number(last, 4));
        assertEquals("0m00s", last.group(5));
        assertEquals(null, last.group(6), "the last line is the end: " + last.group());
    }

    @Test
    void eachPartitionCountsOnceByItsIndex() {
        try (PrepareProgress p = new PrepareProgress(spark.sparkContext(), 3_600_000, 3, l -> { })) {
            assertTrue(p.line(false).startsWith("prepare: 0/3 partitions | 0 rows | 0 bytes |"), p.line(false));
            assertTrue(p.line(false).endsWith("| ETA unknown"), p.line(false));
            p.partitionReads().add(new PrepareProgress.PartitionRead(1, 10, 1000));
            p.partitionReads().add(new PrepareProgress.PartitionRead(1, 10, 1000)); // a retried task reports again
            p.partitionReads().add(new PrepareProgress.PartitionRead(0, 5, 2500));
            assertTrue(p.line(false).startsWith("prepare: 2/3 partitions | 15 rows | 3,500 bytes |"), p.line(false));
            assertEquals(3500, p.partitionBytes());
            p.partitionReads().add(new PrepareProgress.PartitionRead(2, 0, 0));
            assertTrue(p.line(false).startsWith("prepare: 3/3 partitions | 15 rows | 3,500 bytes |"), p.line(false));
            assertTrue(p.line(false).endsWith("| ETA 0m00s | all input read; encoding and writing shards"), p.line(false));
        }
    }

    @Test
    void aConsumerThatThrowsOnceStillGetsTheLaterLines() throws InterruptedException {
        List<String> lines = Collections.synchronizedList(new ArrayList<>());
        int[] calls = new int[1];
        try (PrepareProgress p = new PrepareProgress(spark.sparkContext(), 20, 2, l -> {
            if (calls[0]++ == 0) {
                throw new IllegalStateException("the notebook's stream is closed");
            }
            lines.add(l);
        })) {
            long deadline = System.nanoTime() + 10_000_000_000L;
            while (lines.size() < 3 && System.nanoTime() < deadline) {
                Thread.sleep(20);
            }
            assertTrue(lines.size() >= 3, "lines after the throw: " + lines);
            assertTrue(lines.get(0).startsWith("prepare: 0/2 partitions"), lines.get(0));
        }
    }

    @Test
    void aBadIntervalIsAnErrorNamingTheKey() {
        spark.conf().set(PrepareProgress.INTERVAL, "soon");
        try {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> PrepareProgress.intervalMs(spark));
            assertEquals(PrepareProgress.INTERVAL + " must be a duration such as 10s or 500ms, got 'soon'", e.getMessage());
            spark.conf().set(PrepareProgress.INTERVAL, "0s");
            assertEquals(PrepareProgress.INTERVAL + " must be positive, got '0s'",
                    assertThrows(IllegalArgumentException.class, () -> PrepareProgress.intervalMs(spark)).getMessage());
        } finally {
            spark.conf().unset(PrepareProgress.INTERVAL);
        }
    }
}
