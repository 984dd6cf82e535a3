package org.kindling.data;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.io.OutputStream;
import java.io.Serializable;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.ConcurrentHashMap;
import java.util.function.Consumer;
import org.apache.arrow.memory.RootAllocator;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FSDataInputStream;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.apache.spark.Partitioner;
import org.apache.spark.TaskContext;
import org.apache.spark.api.java.JavaPairRDD;
import org.apache.spark.api.java.JavaRDD;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.broadcast.Broadcast;
import org.apache.spark.network.util.JavaUtils;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.functions;
import org.apache.spark.util.CollectionAccumulator;
import org.apache.spark.util.SerializableConfiguration;
import org.apache.spark.util.TaskCompletionListener;
import scala.Tuple2;

/**
 * The prepare job: validate documents (rejecting invalid UTF-8, empty, oversized, unreadable and
 * malformed ones with their reason), optionally drop exact duplicates, train or load the
 * tokenizer, encode with end-of-text appended, split at max_len, bucket by length and write one
 * Arrow shard per (bucket, slice); then {@code tokenizer.json} and, last and atomically,
 * {@code manifest.json}. Same input and options give byte-identical output.
 */
public final class PrepareJob {
    private static final System.Logger LOG = System.getLogger(PrepareJob.class.getName());
    static final ObjectMapper JSON = new ObjectMapper();
    /** Spark conf key: the time between progress lines, a Spark time ("10s", the default, or "500ms"). */
    public static final String PROGRESS_INTERVAL = PrepareProgress.INTERVAL;
    /** Spark conf key: line-delimited text and JSONL files larger than this size ("64m", the default) are read by several tasks. */
    public static final String SPLIT_BYTES = LineRanges.SPLIT_BYTES;
    static final String MANIFEST = "manifest.json";

    /** {@code value} as a positive Spark time in ms (e.g. {@link #PROGRESS_INTERVAL}'s); errors name {@code name}, a key or an option. */
    public static long positiveMs(String value, String name) {
        long ms;
        try {
            ms = JavaUtils.timeStringAsMs(value);
        } catch (RuntimeException e) {
            throw new IllegalArgumentException(name + " must be a duration such as 10s or 500ms, got '" + value + "'", e);
        }
        if (ms <= 0) {
            throw new IllegalArgumentException(name + " must be positive, got '" + value + "'");
        }
        return ms;
    }

    /** {@code value} as a positive Spark size in bytes (e.g. {@link #SPLIT_BYTES}'s); errors name {@code name}, a key or an option. */
    public static long positiveBytes(String value, String name) {
        long b;
        try {
            b = JavaUtils.byteStringAsBytes(value);
        } catch (RuntimeException e) {
            throw new IllegalArgumentException(name + " must be a size such as 64m or 1k, got '" + value + "'", e);
        }
        if (b <= 0) {
            throw new IllegalArgumentException(name + " must be positive, got '" + value + "'");
        }
        return b;
    }

    private PrepareJob() {
    }

    /** One document or one rejected input. */
    record Doc(long id, String source, long line, String text, String reason, String head) implements Serializable {
        boolean rejected() {
            return reason != null;
        }

        static Doc reject(long id, String source, long line, byte[] bytes, String reason) {
            byte[] head = java.util.Arrays.copyOf(bytes, Math.min(bytes.length, 64));
            return new Doc(id, source, line, null, reason, new String(head, StandardCharsets.ISO_8859_1));
        }
    }

    /** Sort and partition key of a token chunk. */
    record ChunkKey(int bucket, long doc, int chunk) implements Serializable, Comparable<ChunkKey> {
        @Override
        public int compareTo(ChunkKey o) {
            int c = Integer.compare(bucket, o.bucket);
            if (c != 0) {
                return c;
            }
            c = Long.compare(doc, o.doc);
            return c != 0 ? c : Integer.compare(chunk, o.chunk);
        }
    }

    /** Partition = bucket × slices + (document hash mod slices): one bucket per partition, so one per file. */
    static final class BucketPartitioner extends Partitioner {
        private final int buckets;
        private final int slices;

        BucketPartitioner(int buckets, int slices) {
            this.buckets = buckets;
            this.slices = slices;
        }

        @Override
        public int numPartitions() {
            return buckets * slices;
        }

        @Override
        public int getPartition(Object key) {
            ChunkKey k = (ChunkKey) key;
            return k.bucket() * slices + (int) Math.floorMod(Long.hashCode(k.doc()) * 0x9E3779B1, slices);
        }

        @Override
        public boolean equals(Object o) {
            return o instanceof BucketPartitioner p && p.buckets == buckets && p.slices == slices;
        }

        @Override
        public int hashCode() {
            return buckets * 31 + slices;
        }
    }

    /** A written shard, as the manifest lists it. */
    public record ShardEntry(String path, int bucket, long rows, long tokens) implements Serializable {
    }

    /** What one partition wrote: a shard (with its whole documents) or reject lines (with counts by reason). */
    record Part(ShardEntry shard, long documents, Map<String, Long> rejects) implements Serializable {
    }

    /** Keeps the first (lowest id) of documents with equal text; the others become "duplicate" rejects. */
    private static JavaRDD<Doc> dedup(JavaRDD<Doc> docs) {
        return docs.mapToPair(d -> new Tuple2<>(d.rejected() ? "reject:" + d.id() : sha256(d.text()), d)).groupByKey()
                .flatMap(group -> {
                    List<Doc> same = new ArrayList<>();
                    group._2().forEach(same::add);
                    same.sort(java.util.Comparator.comparingLong(Doc::id));
                    List<Doc> out = new ArrayList<>(same.size());
                    out.add(same.get(0));
                    for (Doc d : same.subList(1, same.size())) {
                        out.add(Doc.reject(d.id(), d.source(), d.line(), d.text().getBytes(StandardCharsets.UTF_8), "duplicate"));
                    }
                    return out.iterator();
                });
    }

    /** What a run produced. */
    public record Result(long documents, long tokens, Map<String, Long> rejects, List<ShardEntry> shards, long inputBytes,
                         BpeTokenizer tokenizer) {
    }

    /** Runs the job, logging a progress line every {@link #PROGRESS_INTERVAL} (default 10 s) and once all input is read. */
    public static Result run(SparkSession spark, PrepareOptions opt) throws IOException {
        return run(spark, opt, line -> LOG.log(System.Logger.Level.INFO, line));
    }

    /** Runs the job, passing each progress line (input files and bytes read, rate, ETA) to {@code progressLines}. */
    public static Result run(SparkSession spark, PrepareOptions opt, Consumer<String> progressLines) throws IOException {
        long intervalMs = PrepareProgress.intervalMs(spark);
        long splitBytes = LineRanges.splitBytes(spark);
        JavaSparkContext sc = JavaSparkContext.fromSparkContext(spark.sparkContext());
        Configuration conf = sc.hadoopConfiguration();
        Path out = clearOutput(opt, conf);
        List<String> files = listInputs(opt.inputs(), conf);
        if (files.isEmpty()) {
            throw new IllegalArgumentException("no input files under " + opt.inputs());
        }
        long inputBytes = 0;
        Map<String, Long> sizes = new LinkedHashMap<>();
        for (String f : files) {
            Path p = new Path(f);
            long len = p.getFileSystem(conf).getFileStatus(p).getLen();
            sizes.put(f, len);
            inputBytes += len;
        }
        try (PrepareProgress progress = new PrepareProgress(spark.sparkContext(), intervalMs, sizes,
                progressLines)) {
            return run(spark, sc, opt, out, files, sizes, splitBytes, inputBytes, progress);
        }
    }

    private static Result run(SparkSession spark, JavaSparkContext sc, PrepareOptions opt, Path out, List<String> files,
                              Map<String, Long> sizes, long splitBytes, long inputBytes, PrepareProgress progress) throws IOException {
        Configuration conf = sc.hadoopConfiguration();
        // Tasks rebuild the driver's Hadoop configuration: a fresh one would lack every spark.hadoop.* setting.
        Broadcast<SerializableConfiguration> hadoop = sc.broadcast(new SerializableConfiguration(conf));
        JavaRDD<Doc> docs = read(spark, sc, opt, files, sizes, splitBytes, hadoop, progress.reads());
        Result r = write(sc, opt, out, files, docs, inputBytes, hadoop);
        progress.finish();
        return r;
    }

    /**
     * Prepares the documents of a Spark DataFrame: every row's {@code opt.textField()} column is one
     * document, validated like a file's (a null value is a {@code missing_field} reject, a value that
     * is not a string a {@code not_text} reject, both in {@code rejects/} with the row's index as its
     * line). {@code opt.inputs()} name the frame: rejects and the manifest give them as its source.
     * {@link Result#inputBytes()} counts the UTF-8 bytes of the string values. Logs a progress line
     * every {@link #PROGRESS_INTERVAL} and once all input is read.
     */
    public static Result run(SparkSession spark, Dataset<Row> frame, PrepareOptions opt) throws IOException {
        return run(spark, frame, opt, line -> LOG.log(System.Logger.Level.INFO, line));
    }

    /**
     * As {@link #run(SparkSession, Dataset, PrepareOptions)}, passing each progress line (the frame's
     * partitions read, their rows and bytes, rate, ETA) to {@code progressLines}.
     */
    public static Result run(SparkSession spark, Dataset<Row> frame, PrepareOptions opt, Consumer<String> progressLines)
            throws IOException {
        String field = opt.textField();
        if (!java.util.Arrays.asList(frame.columns()).contains(field)) {
            throw new IllegalArgumentException("the DataFrame has no column \"" + field + "\"; its columns are "
                    + java.util.Arrays.toString(frame.columns()));
        }
        long intervalMs = PrepareProgress.intervalMs(spark);
        JavaSparkContext sc = JavaSparkContext.fromSparkContext(spark.sparkContext());
        Configuration conf = sc.hadoopConfiguration();
        Path out = clearOutput(opt, conf);
        String source = String.join(",", opt.inputs());
        long maxBytes = opt.maxDocBytes();
        JavaRDD<Row> values = frame.select(functions.col(field)).javaRDD();
        try (PrepareProgress progress = new PrepareProgress(spark.sparkContext(), intervalMs, values.getNumPartitions(),
                progressLines)) {
            CollectionAccumulator<PrepareProgress.PartitionRead> reads = progress.partitionReads();
            // Each partition reports once it is read to its end; the driver keeps one report per index, so retried
            // or recomputed partitions neither repeat in the lines nor count twice in inputBytes.
            JavaRDD<Doc> docs = values.zipWithIndex().mapPartitionsWithIndex((part, it) -> new Iterator<Doc>() {
                private long rows;
                private long bytes;
                private boolean reported;

                @Override
                public boolean hasNext() {
                    boolean more = it.hasNext();
                    if (!more && !reported) {
                        reported = true;
                        reads.add(new PrepareProgress.PartitionRead(part, rows, bytes));
                    }
                    return more;
                }

                @Override
                public Doc next() {
                    Tuple2<Row, Long> t = it.next();
                    rows++;
                    Object v = t._1().get(0);
                    if (!(v instanceof String s)) {
                        return Doc.reject(t._2(), source, t._2(), v == null ? new byte[0]
                                : String.valueOf(v).getBytes(StandardCharsets.UTF_8), v == null ? "missing_field" : "not_text");
                    }
                    byte[] b = s.getBytes(StandardCharsets.UTF_8);
                    bytes += b.length;
                    return document(t._2(), source, t._2(), b, maxBytes);
                }
            }, true);
            Broadcast<SerializableConfiguration> hadoop = sc.broadcast(new SerializableConfiguration(conf));
            Result r = write(sc, opt, out, opt.inputs(), docs, 0, hadoop);
            progress.finish();
            return new Result(r.documents(), r.tokens(), r.rejects(), r.shards(), progress.partitionBytes(), r.tokenizer());
        }
    }

    /** The qualified output directory, emptied when --overwrite allows it. */
    private static Path clearOutput(PrepareOptions opt, Configuration conf) throws IOException {
        Path out = new Path(opt.output());
        FileSystem outFs = out.getFileSystem(conf);
        out = outFs.makeQualified(out);
        if (outFs.exists(out)) {
            if (!opt.overwrite() && (outFs.exists(new Path(out, MANIFEST)) || outFs.listStatus(out).length > 0)) {
                throw new IllegalArgumentException(out + " already holds " + (outFs.exists(new Path(out, MANIFEST))
                        ? "a dataset" : "files") + "; pass --overwrite to replace it");
            }
            outFs.delete(out, true);
        }
        return out;
    }

    /** Dedup, tokenizer, shards, rejects, tokenizer.json and, last, the manifest of {@code docs}. */
    private static Result write(JavaSparkContext sc, PrepareOptions opt, Path out, List<String> files, JavaRDD<Doc> docs,
                                long inputBytes, Broadcast<SerializableConfiguration> hadoop) throws IOException {
        Configuration conf = sc.hadoopConfiguration();
        FileSystem outFs = out.getFileSystem(conf);
        if (opt.dedup()) {
            docs = dedup(docs);
        }
        boolean train = opt.tokenizer() == null;
        if (train) {
            docs = docs.persist(org.apache.spark.storage.StorageLevel.MEMORY_AND_DISK()); // read once for counts, once to encode
        }
        BpeTokenizer tokenizer = train ? train(docs.filter(d -> !d.rejected()), opt.vocabSize()) : loadTokenizer(opt.tokenizer(), conf);
        if (tokenizer.endOfText() < 0) {
            throw new IllegalArgumentException("tokenizer has no " + BpeTokenizer.END_OF_TEXT + " special token");
        }
        String tokenizerJson = tokenizer.toJson();
        Broadcast<String> tokJson = sc.broadcast(tokenizerJson);
        Shard.Info template = new Shard.Info(tokenizer.sha256(), tokenizer.vocabSize(), JSON.writeValueAsString(tokenizer.specials()),
                0, 0);
        List<Integer> buckets = opt.buckets();
        int rejectBucket = buckets.size();
        int maxLen = opt.maxLen();
        int slices = Math.max(1, sc.defaultParallelism() / buckets.size());
        // One pass: documents become token chunks keyed by length bucket, rejects go to a bucket of their own.
        JavaPairRDD<ChunkKey, Object> records = docs.flatMapToPair(d -> {
            List<Tuple2<ChunkKey, Object>> out2 = new ArrayList<>();
            if (d.rejected()) {
                out2.add(new Tuple2<>(new ChunkKey(rejectBucket, d.id(), 0), d));
                return out2.iterator();
            }
            BpeTokenizer tok = tokenizer(tokJson.value());
            int[] ids = tok.encode(d.text());
            int total = ids.length + 1;
            for (int from = 0, c = 0; from < total; from += maxLen, c++) {
                int to = Math.min(total, from + maxLen);
                out2.add(new Tuple2<>(new ChunkKey(bucketIndex(buckets, to - from), d.id(), c), packChunk(ids, tok.endOfText(), from, to)));
            }
            return out2.iterator();
        });
        String outDir = out.toString();
        List<Part> parts = records.repartitionAndSortWithinPartitions(new BucketPartitioner(buckets.size() + 1, slices))
                .mapPartitionsWithIndex((part, it) -> part / slices == rejectBucket
                        ? writeRejects(part, it, outDir, hadoop.value().value())
                        : writeShard(part, it, outDir, hadoop.value().value(), template, buckets, slices), true)
                .collect();
        if (train) {
            docs.unpersist();
        }
        List<ShardEntry> shards = new ArrayList<>();
        Map<String, Long> rejects = new TreeMap<>();
        long documents = 0;
        for (Part part : parts) {
            if (part.shard() != null) {
                shards.add(part.shard());
            }
            documents += part.documents();
            part.rejects().forEach((k, v) -> rejects.merge(k, v, Long::sum));
        }
        shards.sort(java.util.Comparator.comparing(ShardEntry::path));
        long tokens = shards.stream().mapToLong(ShardEntry::tokens).sum();

        try (OutputStream o = outFs.create(new Path(out, "tokenizer.json"), true)) {
            o.write(tokenizerJson.getBytes(StandardCharsets.UTF_8));
        }
        writeManifest(outFs, out, opt, files, documents, tokens, rejects, shards, tokenizer);
        return new Result(documents, tokens, rejects, shards, inputBytes, tokenizer);
    }

    /**
     * Positions {@code from} to {@code to} of {@code ids} followed by {@code endOfText}, as unsigned LEB128 varints: the
     * shuffle record of a chunk. Java serialization of an int[] takes 4 bytes a token; this takes 1–2 for vocabularies
     * under 16 384 and spares the copies of the ids into a document array and then into chunk arrays.
     */
    static byte[] packChunk(int[] ids, int endOfText, int from, int to) {
        byte[] buf = new byte[5 * (to - from)];
        int n = 0;
        for (int p = from; p < to; p++) {
            int v = p < ids.length ? ids[p] : endOfText;
            while ((v & ~0x7F) != 0) {
                buf[n++] = (byte) (v | 0x80);
                v >>>= 7;
            }
            buf[n++] = (byte) v;
        }
        return java.util.Arrays.copyOf(buf, n);
    }

    /** Decodes {@link #packChunk}'s bytes into {@code into} (at least as long as the chunk) and returns the id count. */
    static int unpackChunk(byte[] packed, int[] into) {
        int n = 0;
        for (int i = 0; i < packed.length; ) {
            int v = 0;
            for (int shift = 0; ; shift += 7) {
                byte b = packed[i++];
                v |= (b & 0x7F) << shift;
                if (b >= 0) {
                    break;
                }
            }
            into[n++] = v;
        }
        return n;
    }

    private static int bucketIndex(List<Integer> buckets, int len) {
        for (int i = 0; i < buckets.size(); i++) {
            if (len <= buckets.get(i)) {
                return i;
            }
        }
        throw new IllegalStateException("chunk of " + len + " tokens exceeds the largest bucket");
    }

    /** Input files, expanded from directories and globs, qualified and sorted: their order fixes document ids. */
    static List<String> listInputs(List<String> inputs, Configuration conf) throws IOException {
        List<String> out = new ArrayList<>();
        for (String in : inputs) {
            Path p = new Path(in);
            FileSystem fs = p.getFileSystem(conf);
            FileStatus[] matches = fs.globStatus(p);
            if (matches == null || matches.length == 0) {
                throw new IllegalArgumentException("--input " + in + " does not exist");
            }
            for (FileStatus s : matches) {
                collect(fs, s, out);
            }
        }
        out.sort(null);
        return out;
    }

    private static void collect(FileSystem fs, FileStatus s, List<String> out) throws IOException {
        if (s.isDirectory()) {
            for (FileStatus c : fs.listStatus(s.getPath())) {
                collect(fs, c, out);
            }
        } else {
            String name = s.getPath().getName();
            if (!name.startsWith(".") && !name.startsWith("_")) {
                out.add(fs.makeQualified(s.getPath()).toString());
            }
        }
    }

    private static JavaRDD<Doc> read(SparkSession spark, JavaSparkContext sc, PrepareOptions opt, List<String> files,
                                     Map<String, Long> sizes, long splitBytes, Broadcast<SerializableConfiguration> hadoop,
                                     CollectionAccumulator<PrepareProgress.Read> reads) {
        Map<String, Integer> index = new LinkedHashMap<>();
        List<String> byteFiles = new ArrayList<>();
        List<String> parquet = new ArrayList<>();
        for (int i = 0; i < files.size(); i++) {
            String f = files.get(i);
            index.put(f, i);
            PrepareOptions.Format format = opt.format() != null ? opt.format() : PrepareOptions.Format.of(f);
            (format == PrepareOptions.Format.PARQUET ? parquet : byteFiles).add(f);
        }
        Broadcast<Map<String, Integer>> fileIndex = sc.broadcast(index);
        PrepareOptions.Format forced = opt.format();
        boolean lineDocs = opt.lineDocs();
        String field = opt.textField();
        long maxBytes = opt.maxDocBytes();
        JavaRDD<Doc> docs = sc.emptyRDD();
        // Each task's copy of the closure keeps the split its previous row came from: one report per split, not per row.
        PrepareProgress.Read[] lastSplit = new PrepareProgress.Read[1];
        if (!byteFiles.isEmpty()) {
            List<LineRanges.Range> ranges = ranges(sc, opt, byteFiles, index, sizes, splitBytes, hadoop);
            // One task per range (binaryFiles would pack small files into too few splits to use every core).
            int partitions = Math.max(1, Math.min(ranges.size(), 4 * sc.defaultParallelism()));
            docs = sc.parallelize(ranges, partitions).flatMap(r -> {
                PrepareOptions.Format format = forced != null ? forced : PrepareOptions.Format.of(r.file());
                if (r.whole()) {
                    List<Doc> read = readFile(r.file(), r.fileIndex(), format, lineDocs, field, maxBytes, hadoop.value().value());
                    reads.add(PrepareProgress.Read.whole(r.file()));
                    return read.iterator();
                }
                return readRange(r, format, field, maxBytes, hadoop.value().value(),
                        () -> reads.add(new PrepareProgress.Read(r.file(), r.start(), r.end() - r.start())));
            });
        }
        if (!parquet.isEmpty()) {
            JavaRDD<Doc> rows = spark.read().parquet(parquet.toArray(new String[0]))
                    .select(functions.col(field), functions.input_file_name().as("_file"), functions.input_file_block_start(),
                            functions.input_file_block_length())
                    .javaRDD().zipWithIndex().map(t -> {
                        Row r = t._1();
                        String path = new Path(r.getString(1)).toString(); // file:///x → file:/x, as the listing wrote it
                        PrepareProgress.Read split = new PrepareProgress.Read(path, r.getLong(2), r.getLong(3));
                        if (!split.equals(lastSplit[0])) {
                            reads.add(split);
                            lastSplit[0] = split;
                        }
                        Integer fi = fileIndex.value().get(path);
                        if (fi == null) {
                            throw new IllegalStateException("Parquet row from " + path + ", which is not among the listed inputs");
                        }
                        long id = ((long) fi << 32) | (t._2() & 0xffffffffL);
                        Object v = r.get(0);
                        if (!(v instanceof String s)) {
                            return Doc.reject(id, path, t._2(), new byte[0], v == null ? "missing_field" : "not_text");
                        }
                        return document(id, path, t._2(), s.getBytes(StandardCharsets.UTF_8), maxBytes);
                    });
            docs = docs.union(rows);
        }
        return docs;
    }

    /**
     * The ranges tasks read the text and JSONL files in: a line-delimited file larger than {@code splitBytes} in ranges of
     * it, each with its first line's index from a pre-pass that counts every range's lines; any other file whole (a
     * document per file cannot be split, a small one need not be, one that cannot be read becomes its reject as before).
     */
    static List<LineRanges.Range> ranges(JavaSparkContext sc, PrepareOptions opt, List<String> byteFiles, Map<String, Integer> index,
                                         Map<String, Long> sizes, long splitBytes, Broadcast<SerializableConfiguration> hadoop) {
        List<LineRanges.Range> ranges = new ArrayList<>();
        List<LineRanges.Range> toCount = new ArrayList<>();
        for (String f : byteFiles) {
            PrepareOptions.Format format = opt.format() != null ? opt.format() : PrepareOptions.Format.of(f);
            long size = sizes.get(f);
            if ((format == PrepareOptions.Format.TEXT && !opt.lineDocs()) || size <= splitBytes) {
                ranges.add(new LineRanges.Range(f, index.get(f), 0, size, true, 0, -1));
            } else {
                for (long start = 0; start < size; start += splitBytes) {
                    toCount.add(new LineRanges.Range(f, index.get(f), start, Math.min(size, start + splitBytes), false, 0, -1));
                }
            }
        }
        if (toCount.isEmpty()) {
            return ranges;
        }
        List<Long> counts = sc.parallelize(toCount, Math.min(toCount.size(), 4 * sc.defaultParallelism())).map(r -> {
            Path file = new Path(r.file());
            try (var in = file.getFileSystem(hadoop.value().value()).open(file)) {
                in.seek(Math.max(r.start() - 1, 0));
                return LineRanges.count(in, r.start(), r.end());
            } catch (IOException e) {
                return -1L; // read whole, where it becomes the file's "unreadable" reject as an unsplit run makes it
            }
        }).collect();
        Map<String, List<LineRanges.Range>> byFile = new LinkedHashMap<>();
        for (int i = 0; i < toCount.size(); i++) {
            LineRanges.Range r = toCount.get(i);
            byFile.computeIfAbsent(r.file(), k -> new ArrayList<>()).add(new LineRanges.Range(r.file(), r.fileIndex(), r.start(), r.end(),
                    false, 0, counts.get(i)));
        }
        byFile.forEach((f, parts) -> {
            if (parts.stream().anyMatch(r -> r.lines() < 0)) {
                ranges.add(new LineRanges.Range(f, index.get(f), 0, sizes.get(f), true, 0, -1));
                return;
            }
            long line = 0;
            for (LineRanges.Range r : parts) {
                ranges.add(new LineRanges.Range(f, r.fileIndex(), r.start(), r.end(), false, line, r.lines()));
                line += r.lines();
            }
            if (line > 1L << 32) {
                throw new IllegalArgumentException(f + " has " + line + " lines; document ids allow at most " + (1L << 32)
                        + " per file (split it into several files)");
            }
        });
        return ranges;
    }

    /**
     * The documents of one range of a line-delimited file, read as the task iterates; {@code done} runs once it has
     * read them all. A read error fails the task (Spark retries it): the range's lines before it are already passed on,
     * so it cannot become an "unreadable" reject as a whole file does.
     */
    static Iterator<Doc> readRange(LineRanges.Range r, PrepareOptions.Format format, String field, long maxBytes, Configuration conf,
                                   Runnable done) throws IOException {
        Path file = new Path(r.file());
        FSDataInputStream in = file.getFileSystem(conf).open(file);
        TaskContext task = TaskContext.get();
        if (task != null) {
            task.addTaskCompletionListener((TaskCompletionListener) t -> closeQuietly(in)); // a task stopped mid-range
        }
        LineRanges.Lines lines;
        try {
            in.seek(Math.max(r.start() - 1, 0));
            lines = new LineRanges.Lines(in, r.start(), r.end());
        } catch (IOException | RuntimeException e) {
            closeQuietly(in);
            throw e;
        }
        return new Iterator<>() {
            private long line = r.firstLine();
            private boolean finished;

            @Override
            public boolean hasNext() {
                if (lines.hasNext()) {
                    return true;
                }
                if (!finished) {
                    finished = true;
                    closeQuietly(in);
                    if (line != r.firstLine() + r.lines()) {
                        throw new IllegalStateException(r.file() + " changed while it was read: bytes " + r.start() + "-" + r.end()
                                + " held " + r.lines() + " lines when counted and " + (line - r.firstLine()) + " when read");
                    }
                    done.run();
                }
                return false;
            }

            @Override
            public Doc next() {
                byte[] bytes = lines.next();
                Doc d = lineDocument(((long) r.fileIndex() << 32) | line, r.file(), line + 1, bytes, format, field, maxBytes);
                line++;
                return d;
            }
        };
    }

    private static void closeQuietly(FSDataInputStream in) {
        try {
            in.close();
        } catch (IOException e) {
            LOG.log(System.Logger.Level.DEBUG, "closing an input stream failed", e);
        }
    }

    /** The documents of one text or JSONL file read whole (or its rejection as unreadable). */
    static List<Doc> readFile(String path, int fi, PrepareOptions.Format format, boolean lineDocs, String field, long maxBytes,
                              Configuration conf) {
        List<Doc> out = new ArrayList<>();
        byte[] bytes;
        try {
            Path file = new Path(path);
            try (var in = file.getFileSystem(conf).open(file)) {
                bytes = in.readAllBytes();
            }
        } catch (IOException | RuntimeException e) {
            out.add(Doc.reject((long) fi << 32, path, -1, new byte[0], "unreadable"));
            return out;
        }
        if (format == PrepareOptions.Format.TEXT && !lineDocs) {
            out.add(document((long) fi << 32, path, 0, bytes, maxBytes));
            return out;
        }
        LineRanges.Lines lines = new LineRanges.Lines(new java.io.ByteArrayInputStream(bytes), 0, bytes.length);
        for (long i = 0; lines.hasNext(); i++) {
            out.add(lineDocument(((long) fi << 32) | i, path, i + 1, lines.next(), format, field, maxBytes));
        }
        return out;
    }

    /** The document of line {@code line} (1-based) of a text or JSONL file. */
    private static Doc lineDocument(long id, String path, long line, byte[] bytes, PrepareOptions.Format format, String field,
                                    long maxBytes) {
        return format == PrepareOptions.Format.JSONL ? jsonDocument(id, path, line, bytes, field, maxBytes)
                : document(id, path, line, bytes, maxBytes);
    }

    /** A document from raw bytes, or the reason it is rejected. */
    static Doc document(long id, String source, long line, byte[] bytes, long maxBytes) {
        if (bytes.length > maxBytes) {
            return Doc.reject(id, source, line, bytes, "too_large");
        }
        // The lenient decoder is the JDK's fast one; only text holding U+FFFD (written or a replaced bad sequence) is
        // decoded again strictly to tell the two apart.
        String text = new String(bytes, StandardCharsets.UTF_8);
        if (text.indexOf('\uFFFD') >= 0) {
            try {
                StandardCharsets.UTF_8.newDecoder().onMalformedInput(CodingErrorAction.REPORT)
                        .onUnmappableCharacter(CodingErrorAction.REPORT).decode(ByteBuffer.wrap(bytes));
            } catch (CharacterCodingException e) {
                return Doc.reject(id, source, line, bytes, "invalid_utf8");
            }
        }
        if (text.isBlank()) {
            return Doc.reject(id, source, line, bytes, "empty");
        }
        return new Doc(id, source, line, text, null, null);
    }

    static Doc jsonDocument(long id, String source, long line, byte[] bytes, String field, long maxBytes) {
        Doc raw = document(id, source, line, bytes, Long.MAX_VALUE);
        if (raw.rejected()) {
            return raw;
        }
        JsonNode node;
        try {
            node = JSON.readTree(raw.text());
        } catch (IOException e) {
            return Doc.reject(id, source, line, bytes, "invalid_json");
        }
        JsonNode v = node == null ? null : node.get(field);
        if (v == null || v.isNull()) {
            return Doc.reject(id, source, line, bytes, "missing_field");
        }
        if (!v.isTextual()) {
            return Doc.reject(id, source, line, bytes, "not_text");
        }
        return document(id, source, line, v.asText().getBytes(StandardCharsets.UTF_8), maxBytes);
    }

    private static final Map<String, BpeTokenizer> TOKENIZERS = new ConcurrentHashMap<>();

    /** One parsed tokenizer per JVM and tokenizer text: executors parse the broadcast JSON once. */
    static BpeTokenizer tokenizer(String json) {
        return TOKENIZERS.computeIfAbsent(json, j -> BpeTokenizer.fromJson(j, "broadcast tokenizer.json"));
    }

    private static BpeTokenizer loadTokenizer(String path, Configuration conf) throws IOException {
        Path p = new Path(path);
        FileSystem fs = p.getFileSystem(conf);
        if (!fs.exists(p)) {
            throw new IllegalArgumentException("--tokenizer " + path + " does not exist");
        }
        try (var in = fs.open(p)) {
            return BpeTokenizer.fromJson(new String(in.readAllBytes(), StandardCharsets.UTF_8), path);
        }
    }

    /** Pre-token counts are aggregated by Spark; merges are learned on the driver. */
    private static BpeTokenizer train(JavaRDD<Doc> docs, int vocabSize) {
        Map<String, Long> counts = docs.flatMapToPair(d -> {
            Map<String, Long> local = new java.util.HashMap<>();
            BpeTrainer.count(d.text(), local);
            List<Tuple2<String, Long>> out = new ArrayList<>(local.size());
            local.forEach((k, v) -> out.add(new Tuple2<>(k, v)));
            return out.iterator();
        }).reduceByKey(Long::sum).collectAsMap();
        return BpeTrainer.train(counts, vocabSize, List.of(BpeTokenizer.END_OF_TEXT));
    }

    private static Iterator<Part> writeShard(int part, Iterator<Tuple2<ChunkKey, Object>> it, String outDir, Configuration conf,
                                             Shard.Info template, List<Integer> buckets, int slices) throws IOException {
        if (!it.hasNext()) {
            return java.util.Collections.emptyIterator();
        }
        int bucket = part / slices;
        int lo = bucket == 0 ? 1 : buckets.get(bucket - 1) + 1;
        int hi = buckets.get(bucket);
        Shard.Info info = new Shard.Info(template.tokenizerSha256(), template.vocabSize(), template.specialTokensJson(), lo, hi);
        String name = String.format("shards/part-%05d-bucket-%d.arrow", part, hi);
        long documents = 0;
        long rows;
        long tokens;
        int[] chunk = new int[hi];
        try (Replacing file = new Replacing(outDir, name, conf); RootAllocator allocator = new RootAllocator();
             ShardWriter w = new ShardWriter(file.stream(), info, allocator, 1024)) {
            while (it.hasNext()) {
                Tuple2<ChunkKey, Object> t = it.next();
                int n = unpackChunk((byte[]) t._2(), chunk);
                w.write(t._1().doc(), chunk, 0, n);
                documents += t._1().chunk() == 0 ? 1 : 0;
            }
            rows = w.rows();
            tokens = w.tokens();
        }
        return List.of(new Part(new ShardEntry(name, hi, rows, tokens), documents, Map.of())).iterator();
    }

    private static Iterator<Part> writeRejects(int part, Iterator<Tuple2<ChunkKey, Object>> it, String outDir, Configuration conf)
            throws IOException {
        if (!it.hasNext()) {
            return java.util.Collections.emptyIterator();
        }
        Map<String, Long> counts = new TreeMap<>();
        try (Replacing file = new Replacing(outDir, String.format("rejects/part-%05d.jsonl", part), conf)) {
            OutputStream o = file.stream();
            while (it.hasNext()) {
                Doc d = (Doc) it.next()._2();
                counts.merge(d.reason(), 1L, Long::sum);
                o.write((rejectLine(d) + "\n").getBytes(StandardCharsets.UTF_8));
            }
        }
        return List.of(new Part(null, 0, counts)).iterator();
    }

    /**
     * A file written aside and renamed into place on close, replacing what a failed earlier attempt
     * of the same task left, so retried tasks are harmless.
     */
    private static final class Replacing implements AutoCloseable {
        private final FileSystem fs;
        private final Path target;
        private final Path tmp;
        private final OutputStream stream;

        Replacing(String dir, String name, Configuration conf) throws IOException {
            target = new Path(dir, name);
            fs = target.getFileSystem(conf);
            tmp = new Path(dir, "_tmp/" + name.replace('/', '_') + "." + java.util.UUID.randomUUID());
            stream = new java.io.BufferedOutputStream(fs.create(tmp, true), 1 << 16);
        }

        OutputStream stream() {
            return stream;
        }

        @Override
        public void close() throws IOException {
            stream.close();
            fs.delete(target, false);
            fs.mkdirs(target.getParent());
            if (!fs.rename(tmp, target)) {
                throw new IOException("cannot rename " + tmp + " to " + target);
            }
        }
    }

    private static String rejectLine(Doc d) throws IOException {
        ObjectNode n = JSON.createObjectNode();
        n.put("reason", d.reason());
        n.put("source", d.source());
        n.put("line", d.line());
        n.put("first_bytes", d.head());
        return JSON.writeValueAsString(n);
    }

    private static void writeManifest(FileSystem fs, Path out, PrepareOptions opt, List<String> files, long documents, long tokens,
                                      Map<String, Long> rejects, List<ShardEntry> shards, BpeTokenizer tokenizer) throws IOException {
        ObjectNode m = JSON.createObjectNode();
        m.put("format_version", Shard.FORMAT_VERSION);
        m.put("documents", documents);
        m.put("tokens", tokens);
        ObjectNode r = m.putObject("rejects");
        rejects.forEach(r::put);
        ArrayNode s = m.putArray("shards");
        for (ShardEntry e : shards) {
            s.addObject().put("path", e.path()).put("bucket", e.bucket()).put("rows", e.rows()).put("tokens", e.tokens());
        }
        ObjectNode t = m.putObject("tokenizer");
        t.put("path", "tokenizer.json");
        t.put("sha256", tokenizer.sha256());
        t.put("vocab_size", tokenizer.vocabSize());
        t.put("end_of_text", tokenizer.endOfText());
        ArrayNode in = m.putArray("inputs");
        files.forEach(in::add);
        ObjectNode o = m.putObject("options");
        o.put("format", opt.format() == null ? "auto" : opt.format().name().toLowerCase(java.util.Locale.ROOT));
        o.put("line_docs", opt.lineDocs());
        o.put("text_field", opt.textField());
        o.put("max_len", opt.maxLen());
        ArrayNode b = o.putArray("buckets");
        opt.buckets().forEach(b::add);
        o.put("dedup", opt.dedup());
        o.put("max_doc_bytes", opt.maxDocBytes());
        if (opt.tokenizer() == null) {
            o.put("vocab_size", opt.vocabSize());
        }
        Path tmp = new Path(out, MANIFEST + ".tmp");
        try (OutputStream os = fs.create(tmp, true)) {
            os.write(JSON.writerWithDefaultPrettyPrinter().writeValueAsBytes(m));
        }
        fs.delete(new Path(out, "_tmp"), true);
        if (!fs.rename(tmp, new Path(out, MANIFEST))) {
            throw new IOException("cannot rename " + tmp + " to " + new Path(out, MANIFEST));
        }
    }

    static String sha256(String text) {
        try {
            return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(text.getBytes(StandardCharsets.UTF_8)));
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }
}
