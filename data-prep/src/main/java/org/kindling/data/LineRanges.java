package org.kindling.data;

import java.io.IOException;
import java.io.InputStream;
import java.io.Serializable;
import java.io.UncheckedIOException;
import java.util.Arrays;
import java.util.Iterator;
import java.util.NoSuchElementException;
import org.apache.spark.sql.SparkSession;

/**
 * Line-delimited files read as byte ranges by several tasks, by Hadoop's LineRecordReader rule: a range
 * {@code [start, end)} owns the lines that start inside it, so it skips a first line that began before {@code start} and
 * reads past {@code end} to finish its last. A line ends at {@code '\n'} (a {@code '\r'} before it, or before the end of
 * the file, is dropped); there is no empty line after a final {@code '\n'}.
 *
 * <p>Document ids and reject line numbers are global line indices within the file, so a range must know how many lines
 * start before it: a pre-pass counts each range's lines (a byte scan for {@code '\n'}, far cheaper than decoding and
 * encoding them), and the driver adds them up.
 */
final class LineRanges {
    /** Spark conf key: line-delimited files larger than this many bytes are read as ranges of it ("64m", the default). */
    static final String SPLIT_BYTES = "spark.kindling.prepare.splitBytes";
    static final String DEFAULT_SPLIT_BYTES = "64m";
    private static final int BUFFER = 1 << 16;

    private LineRanges() {
    }

    /**
     * A part of a file that one task reads.
     *
     * @param whole the file is read whole (it is small, a document per file, or could not be counted)
     * @param firstLine the index within the file of the first line the range owns
     * @param lines how many lines it owns (checked when it is read: the file must not change in between)
     */
    record Range(String file, int fileIndex, long start, long end, boolean whole, long firstLine, long lines)
            implements Serializable {
    }

    /** The session's {@link #SPLIT_BYTES} (default 64 MiB); a bad value is an error naming the key. */
    static long splitBytes(SparkSession spark) {
        return PrepareJob.positiveBytes(spark.conf().get(SPLIT_BYTES, DEFAULT_SPLIT_BYTES), SPLIT_BYTES);
    }

    /**
     * The lines that start in {@code [start, end)}; {@code in} is positioned at {@code max(start - 1, 0)}. A line starts
     * at 0 and after each {@code '\n'} but the file's last byte, so these are the {@code '\n'}s in
     * {@code [start - 1, end - 1)}, plus the line at 0.
     */
    static long count(InputStream in, long start, long end) throws IOException {
        long from = Math.max(start - 1, 0);
        long left = end - 1 - from;
        long lines = start == 0 && end > 0 ? 1 : 0;
        byte[] buf = new byte[BUFFER];
        while (left > 0) {
            int n = in.read(buf, 0, (int) Math.min(buf.length, left));
            if (n < 0) {
                throw new IOException("ended " + left + " bytes before offset " + (end - 1) + " (did it shrink?)");
            }
            for (int i = 0; i < n; i++) {
                if (buf[i] == '\n') {
                    lines++;
                }
            }
            left -= n;
        }
        return lines;
    }

    /** The lines a range owns, in order, from a stream positioned at {@code max(start - 1, 0)}. */
    static final class Lines implements Iterator<byte[]> {
        private final InputStream in;
        private final long end;
        private final byte[] buf = new byte[BUFFER];
        private int bufPos;
        private int bufLen;
        /** The file offset of {@code buf[bufPos]}. */
        private long pos;
        private byte[] line = new byte[256];
        private int lineLen;

        Lines(InputStream in, long start, long end) {
            this.in = in;
            this.end = end;
            pos = Math.max(start - 1, 0);
            // The byte before start says whether a line starts at start; if not, the range owns none until the next '\n'.
            if (start > 0 && scan(false) < 0) {
                pos = Long.MAX_VALUE; // the file ended in that line: the range owns nothing
            }
        }

        @Override
        public boolean hasNext() {
            return pos < end;
        }

        @Override
        public byte[] next() {
            if (!hasNext()) {
                throw new NoSuchElementException();
            }
            long at = pos;
            lineLen = 0;
            int stop = scan(true);
            if (stop < 0 && lineLen == 0) {
                throw new UncheckedIOException(new IOException("ended at offset " + at + ", before the range's end " + end
                        + " (did it shrink?)"));
            }
            int len = lineLen > 0 && line[lineLen - 1] == '\r' ? lineLen - 1 : lineLen;
            return Arrays.copyOf(line, len);
        }

        /**
         * Reads to just past the next {@code '\n'} (returns it) or to the end of the stream (returns -1), appending the
         * bytes before it to {@code line} when {@code keep}. Starting at a line's first byte, that reads the line.
         */
        private int scan(boolean keep) {
            while (true) {
                if (bufPos == bufLen && !fill()) {
                    return -1;
                }
                int i = bufPos;
                while (i < bufLen && buf[i] != '\n') {
                    i++;
                }
                if (keep) {
                    append(i - bufPos);
                }
                pos += i - bufPos + (i < bufLen ? 1 : 0);
                if (i < bufLen) {
                    bufPos = i + 1;
                    return '\n';
                }
                bufPos = i;
            }
        }

        private void append(int n) {
            if (lineLen + n > line.length) {
                long want = Math.max((long) line.length * 2, (long) lineLen + n);
                if (want > Integer.MAX_VALUE - 8) {
                    throw new UncheckedIOException(new IOException("a line longer than " + (Integer.MAX_VALUE - 8)
                            + " bytes at offset " + (pos - lineLen)));
                }
                line = Arrays.copyOf(line, (int) want);
            }
            System.arraycopy(buf, bufPos, line, lineLen, n);
            lineLen += n;
        }

        private boolean fill() {
            try {
                bufPos = 0;
                bufLen = Math.max(in.read(buf), 0);
                return bufLen > 0;
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        }
    }
}
