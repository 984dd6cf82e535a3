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
import org.apache.spark.sql.SparkSession;
import org.apache.spark.util.CollectionAccumulator;

/**
 * How much of a prepare run's input has been read, as a line every interval and once at the end (like training's progress
 * line): for files, the files and bytes done against the totals the listing gave; for a DataFrame, its partitions done
 * against their count, with their rows and UTF-8 bytes; then the rate and an ETA.
 *
 * <p>Tasks report what they read through an accumulator, which reaches the driver as each task ends: a text or JSONL
 * file once read whole, a range (file, start, length) of a large line-delimited file once read to its end, a Parquet
 * split (file, start, length) once a row of it is read, a DataFrame partition once read to its end. Reports are kept by what they cover (a partition by its index), so a task that runs again (a retry, a
 * recomputed partition) counts once, and the counts only grow. A Parquet split with no row group in it yields no row
 * and so no report; the line at the end, written once every input has been read, counts it.
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

    /** A DataFrame partition that a task has read to its end: its rows and the UTF-8 bytes of their string values. */
    record PartitionRead(int partition, long rows, long bytes) implements Serializable {
    }

    private static final System.Logger LOG = System.getLogger(PrepareProgress.class.getName());

    /** Each input file's length (file input), or null (DataFrame input). */
    private final Map<String, Long> sizes;
    private final long totalBytes;
    /** The DataFrame's partition count (DataFrame input). */
    private final int partitions;
    private final CollectionAccumulator<Read> reads;
    private final CollectionAccumulator<PartitionRead> partitionReads;
    private final Consumer<String> out;
    private final long t0 = System.nanoTime();
    private final ScheduledExecutorService timer;
    /** When the reports first covered all input (0: not yet): the rate stops there, the job goes on encoding. */
    private long readAt;
    /** Whether a line has failed to reach {@code out}: logged once, later lines are still tried. */
    private volatile boolean outFailed;

    /** The session's {@link #INTERVAL} in milliseconds (default 10 s); a bad value is an error naming the key. */
    static long intervalMs(SparkSession spark) {
        return PrepareJob.positiveMs(spark.conf().get(INTERVAL, "10s"), INTERVAL);
    }

    /**
     * Starts printing the lines of a run over files to {@code out} every {@code intervalMs}.
     *
     * @param sizes each input file's length in bytes, by its path as tasks report it
     */
    PrepareProgress(SparkContext sc, long intervalMs, Map<String, Long> sizes, Consumer<String> out) {
        this(sc, intervalMs, Map.copyOf(sizes), 0, out);
    }

    /** Starts printing the lines of a run over a DataFrame of {@code partitions} partitions to {@code out} every {@code intervalMs}. */
    PrepareProgress(SparkContext sc, long intervalMs, int partitions, Consumer<String> out) {
        this(sc, intervalMs, null, partitions, out);
    }

    private PrepareProgress(SparkContext sc, long intervalMs, Map<String, Long> sizes, int partitions, Consumer<String> out) {
        this.sizes = sizes;
        this.totalBytes = sizes == null ? 0 : sizes.values().stream().mapToLong(Long::longValue).sum();
        this.partitions = partitions;
        this.reads = sc.collectionAccumulator("kindling prepare input");
        this.partitionReads = sc.collectionAccumulator("kindling prepare partitions");
        this.out = out;
        this.timer = Executors.newSingleThreadScheduledExecutor(r -> {
            Thread t = new Thread(r, "kindling-prepare-progress");
            t.setDaemon(true);
            return t;
        });
        timer.scheduleAtFixedRate(() -> emit(line(false)), intervalMs, intervalMs, TimeUnit.MILLISECONDS);
    }

    /**
     * Passes a line to {@code out}. A throw is caught: escaping the timer's task it would silently cancel every later
     * line, and at the end it would fail a run whose dataset is written.
     */
    private void emit(String line) {
        try {
            out.accept(line);
        } catch (RuntimeException e) {
            if (!outFailed) {
                outFailed = true;
                LOG.log(System.Logger.Level.WARNING, "a prepare progress line could not be written (later lines are still tried"
                        + " and not logged again if they fail): " + line, e);
            }
        }
    }

    /** The accumulator tasks report to. */
    CollectionAccumulator<Read> reads() {
        return reads;
    }

    /** The accumulator DataFrame tasks report to. */
    CollectionAccumulator<PartitionRead> partitionReads() {
        return partitionReads;
    }

    /** The partitions reported so far, each once (the first report of its index) however often a task ran. */
    private Map<Integer, PartitionRead> partitionsRead() {
        Map<Integer, PartitionRead> seen = new HashMap<>();
        for (PartitionRead r : partitionReads.value()) {
            seen.putIfAbsent(r.partition(), r);
        }
        return seen;
    }

    /** The UTF-8 bytes of the DataFrame's string values, from the partitions reported so far (each once). */
    long partitionBytes() {
        return partitionsRead().values().stream().mapToLong(PartitionRead::bytes).sum();
    }

    /** The progress line: read so far from the reports, or (at the end) everything. */
    synchronized String line(boolean end) {
        return sizes == null ? partitionLine(end) : fileLine(end);
    }

    private String partitionLine(boolean end) {
        Map<Integer, PartitionRead> seen = partitionsRead();
        long rows = seen.values().stream().mapToLong(PartitionRead::rows).sum();
        long bytes = seen.values().stream().mapToLong(PartitionRead::bytes).sum();
        return String.format(Locale.ROOT, "prepare: %,d/%,d partitions | %,d rows | %,d bytes | %s", seen.size(), partitions, rows,
                bytes, rateAndEta(bytes, seen.size(), partitions, end));
    }

    private String fileLine(boolean end) {
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
        return String.format(Locale.ROOT, "prepare: %,d/%,d files | %,d/%,d bytes (%.0f%%) | %s", files, sizes.size(), bytes,
                totalBytes, totalBytes == 0 ? 100.0 : 100.0 * bytes / totalBytes, rateAndEta(bytes, bytes, totalBytes, end));
    }

    /**
     * The line's rate and ETA: {@code bytes} read, {@code done} of {@code total} units (bytes of files, partitions of a
     * DataFrame), the rest expected at the pace so far.
     */
    private String rateAndEta(long bytes, long done, long total, boolean end) {
        if (done >= total && readAt == 0) {
            readAt = System.nanoTime();
        }
        double seconds = ((readAt != 0 ? readAt : System.nanoTime()) - t0) / 1e9;
        String eta;
        if (done >= total) {
            eta = end ? "ETA 0m00s" : "ETA 0m00s | all input read; encoding and writing shards";
        } else if (done == 0) {
            eta = "ETA unknown";
        } else {
            long s = Math.round(seconds * (total - done) / done);
            eta = String.format(Locale.ROOT, "ETA %dm%02ds", s / 60, s % 60);
        }
        return String.format(Locale.ROOT, "%.2f MB/s | %s", bytes / Math.max(seconds, 1e-9) / 1e6, eta);
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
        emit(line(true));
    }
}
