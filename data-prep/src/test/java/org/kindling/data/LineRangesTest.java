package org.kindling.data;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.Test;

/** Byte ranges of a line-delimited file: every split size gives the whole file's lines, each exactly once, in order. */
class LineRangesTest {
    /** The lines of ranges of {@code size} bytes, concatenated, checking each range's count against what it read. */
    private static List<String> bySplits(byte[] file, int size) throws IOException {
        List<String> all = new ArrayList<>();
        for (long start = 0; start < file.length; start += size) {
            long end = Math.min(file.length, start + size);
            long from = Math.max(start - 1, 0);
            ByteArrayInputStream counted = new ByteArrayInputStream(file);
            assertEquals(from, counted.skip(from));
            long lines = LineRanges.count(counted, start, end);
            ByteArrayInputStream read = new ByteArrayInputStream(file);
            assertEquals(from, read.skip(from));
            LineRanges.Lines it = new LineRanges.Lines(read, start, end);
            long n = 0;
            while (it.hasNext()) {
                all.add(new String(it.next(), StandardCharsets.ISO_8859_1));
                n++;
            }
            assertEquals(lines, n, "range " + start + "-" + end + " of size " + size);
        }
        return all;
    }

    private static List<String> whole(byte[] file) throws IOException {
        return bySplits(file, Math.max(1, file.length));
    }

    @Test
    void everySplitSizeGivesTheSameLinesAsTheWholeFile() throws IOException {
        String[] files = {"a\nbb\r\nccc\n\n\r\nlast without newline", "one\n", "\n\n\n", "x", "\r\n\r", "crlf\r\nends\r\n",
            "a long line " + "z".repeat(300) + "\nshort\n" + "y".repeat(70) + "\r\nend\r"};
        for (String f : files) {
            byte[] b = f.getBytes(StandardCharsets.ISO_8859_1);
            List<String> expected = whole(b);
            for (int size = 1; size <= b.length + 1; size++) {
                assertEquals(expected, bySplits(b, size), "split size " + size + " of " + f.replace("\r", "\\r").replace("\n", "\\n"));
            }
        }
    }

    @Test
    void linesEndAtNewlinesAndDropACarriageReturnBeforeThemOrTheEnd() throws IOException {
        assertEquals(List.of("a", "bb", "ccc", "", "", "last without newline"),
                whole("a\nbb\r\nccc\n\n\r\nlast without newline".getBytes(StandardCharsets.ISO_8859_1)));
        assertEquals(List.of("one"), whole("one\n".getBytes(StandardCharsets.ISO_8859_1)), "no empty line after a final newline");
        assertEquals(List.of("", "", ""), whole("\n\n\n".getBytes(StandardCharsets.ISO_8859_1)));
        assertEquals(List.of("", ""), whole("\r\n\r".getBytes(StandardCharsets.ISO_8859_1)));
        assertEquals(List.of(), whole(new byte[0]));
    }

    @Test
    void aFileThatShrankAfterItWasListedIsAnError() {
        byte[] b = "abc\ndef".getBytes(StandardCharsets.ISO_8859_1);
        LineRanges.Lines it = new LineRanges.Lines(new ByteArrayInputStream(b, 0, 4), 0, b.length);
        assertEquals("abc", new String(it.next(), StandardCharsets.ISO_8859_1));
        UncheckedIOException e = assertThrows(UncheckedIOException.class, it::next);
        assertTrue(e.getMessage().contains("did it shrink"), e.getMessage());
        IOException c = assertThrows(IOException.class, () -> LineRanges.count(new ByteArrayInputStream(b, 0, 4), 0, b.length));
        assertTrue(c.getMessage().contains("did it shrink"), c.getMessage());
    }

    @Test
    void aBadSplitSizeIsAnErrorNamingTheKey() {
        SparkSession spark = SparkSession.builder().master("local[1]").appName("line-ranges-test").config("spark.ui.enabled", "false")
                .getOrCreate();
        try {
            assertEquals(64L << 20, LineRanges.splitBytes(spark));
            spark.conf().set(LineRanges.SPLIT_BYTES, "1k");
            assertEquals(1024, LineRanges.splitBytes(spark));
            spark.conf().set(LineRanges.SPLIT_BYTES, "lots");
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> LineRanges.splitBytes(spark));
            assertEquals(LineRanges.SPLIT_BYTES + " must be a size such as 64m or 1k, got 'lots'", e.getMessage());
            spark.conf().set(LineRanges.SPLIT_BYTES, "0");
            assertEquals(LineRanges.SPLIT_BYTES + " must be positive, got '0'",
                    assertThrows(IllegalArgumentException.class, () -> LineRanges.splitBytes(spark)).getMessage());
        } finally {
            spark.stop();
        }
    }
}
