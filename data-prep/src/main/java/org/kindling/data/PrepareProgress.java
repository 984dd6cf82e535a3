package org.kindling.data;

import java.io.Serializable;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.function.Consumer;
import org.apache.spark.SparkContext;
import org.apache.spark.network.util.JavaUtils;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.util.CollectionAccumulator;

/**
 * How much of a prepare run's input has been read: files and bytes done against the totals the listing gave, the rate
 * and an ETA, as a line every interval and once at the end (like training's progress line).
 *
 * <p>Tasks report what they read through an accumulator, which reaches the driver as each task ends: a text or JSONL
 * file once read whole, a Parquet split (file, start, length) once a row of it is read. Reports are kept by what they
 * cover, so a task that runs again (a retry, a recomputed partition) counts once, and the counts only grow. A Parquet
 * split with no row group in it yields no row and so no report; the line at the end, written once every input has
 * been read, counts it.
 */
final class PrepareProgress implements AutoCloseable {
    /** Spark conf key: the interval between progress lines, a Spark time ("10s", "500ms"). */
    static final String INTERVAL = "spark.kindling.prepare.progressInterval";

    /** A part of an input file that a task has read: the whole file when {@code length} is negative. */
    record Read(String file, long start, long length) implements Serializable {
        static Read whole(String file) {
            return new Read(file, 0, -1);
        }
    }

    private final Map<String, Long> sizes;
    private final long totalBytes;
    private final CollectionAccumulator<Read> reads;
    private final Consumer<String> out;
    private final long t0 = System.nanoTime();
    private final ScheduledExecutorService timer;
    /** When the reports first covered every byte (0: not yet): the rate stops there, the job goes on encoding. */
    private long readAt;

    /** The session's {@link #INTERVAL} in milliseconds (default 10 s); a bad value is an error naming the key. */
    static long intervalMs(SparkSession spark) {
        String v = spark.conf().get(INTERVAL, "10s");
        long ms;
        try {
            ms = JavaUtils.timeStringAsMs(v);
        } catch (RuntimeException e) {
            throw new IllegalArgumentException(INTERVAL + " must be a duration such as 10s or 500ms, got '" + v + "'", e);
        }
        if (ms <= 0) {
            throw new IllegalArgumentException(INTERVAL + " must be positive, got '" + v + "'");
        }
        return ms;
    }

    /**
     * Starts printing to {@code out} every {@code intervalMs}.
     *
     * @param sizes each input file's length in bytes, by its path as tasks report it
     */
    PrepareProgress(SparkContext sc, long intervalMs, Map<String, Long> sizes, Consumer<String> out) {
        this.sizes = Map.copyOf(sizes);
        this.totalBytes = sizes.values().stream().mapToLong(Long::longValue).sum();
        this.reads = sc.collectionAccumulator("kindling prepare input");
        this.out = out;
        this.timer = Executors.newSingleThreadScheduledExecutor(r -> {
            Thread t = new Thread(r, "kindling-prepare-progress");
            t.setDaemon(true);
            return t;
        });
        timer.scheduleAtFixedRate(() -> out.accept(line(false)), intervalMs, intervalMs, TimeUnit.MILLISECONDS);
    }

    /** The accumulator tasks report to. */
    CollectionAccumulator<Read> reads() {
        return reads;
    }

    /** The progress line: read so far from the reports, or (at the end) everything. */
    synchronized String line(boolean end) {
        long files;
        long bytes;
        if (end) {
            files = sizes.size();
            bytes = totalBytes;
        } else {
            List<Read> all = reads.value();
            Set<Read> seen = new HashSet<>(all);
            Map<String, Long> perFile = new HashMap<>();
            for (Read r : seen) {
                long size = sizes.getOrDefault(r.file(), 0L);
                perFile.merge(r.file(), r.length() < 0 ? size : r.length(), Long::sum);
            }
            files = 0;
            bytes = 0;
            for (Map.Entry<String, Long> e : perFile.entrySet()) {
                long size = sizes.getOrDefault(e.getKey(), 0L);
                bytes += Math.min(size, e.getValue());
                if (e.getValue() >= size) {
                    files++;
                }
            }
        }
        if (bytes >= totalBytes && readAt == 0) {
            readAt = System.nanoTime();
        }
        double seconds = ((readAt != 0 ? readAt : System.nanoTime()) - t0) / 1e9;
        double rate = bytes / Math.max(seconds, 1e-9);
        String eta;
        if (bytes >= totalBytes) {
            eta = end ? "ETA 0m00s" : "ETA 0m00s | all input read; encoding and writing shards";
        } else if (bytes == 0) {
            eta = "ETA unknown";
        } else {
            long s = Math.round((totalBytes - bytes) / rate);
            eta = String.format(Locale.ROOT, "ETA %dm%02ds", s / 60, s % 60);
        }
        return String.format(Locale.ROOT, "prepare: %,d/%,d files | %,d/%,d bytes (%.0f%%) | %.2f MB/s | %s",
                files, sizes.size(), bytes, totalBytes, totalBytes == 0 ? 100.0 : 100.0 * bytes / totalBytes, rate / 1e6, eta);
    }

    /** Stops the interval lines; {@link #finish} adds the last one. */
    @Override
    public void close() {
        timer.shutdownNow();
        try {
            if (!timer.awaitTermination(10, TimeUnit.SECONDS)) {
                throw new IllegalStateException("the prepare progress thread did not stop within 10 s");
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    /** Stops the interval lines and writes the last: every input has been read. */
    void finish() {
        close();
        out.accept(line(true));
    }
}
