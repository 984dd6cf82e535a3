package org.kindling.data;

import com.fasterxml.jackson.databind.JsonNode;
import java.io.IOException;
import java.io.InputStream;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import org.apache.arrow.memory.BufferAllocator;
import org.apache.arrow.memory.RootAllocator;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;

/**
 * Reads a prepared dataset for training, as an endless stream of packed batches of at most
 * {@code tokenBudget} tokens: the token ids of whole documents (chunks) back to back, with their
 * offsets ({@code cu_seqlens}, from the Arrow list offsets) and document ids. The record batches
 * of all shards are shuffled per epoch from the seed and dealt round-robin to the ranks, so each
 * of {@code world} readers sees its own slice. {@link #position} / {@link #seek} resume exactly.
 */
public final class DatasetReader implements AutoCloseable {
    /** Token ids of sequences back to back; sequence s is tokens[cuSeqlens[s] .. cuSeqlens[s+1]). */
    public record Batch(int[] tokens, int[] cuSeqlens, long[] docIds) {
        public int sequences() {
            return docIds.length;
        }
    }

    private record Unit(int shard, int batch) {
    }

    private final FileSystem fs;
    private final Path root;
    private final List<String> shards = new ArrayList<>();
    private final List<Unit> units = new ArrayList<>();
    private final long seed;
    private final int rank;
    private final int world;
    private final int tokenBudget;
    private final Shard.Info info;
    private final BufferAllocator allocator = new RootAllocator();

    private int[] order;
    private int epoch = -1;
    private int unitCursor;
    private int docCursor;
    private ShardReader.Batch current;
    private int currentUnit = -1;

    /** Opens the dataset at {@code dir}: it must be complete (have its manifest). */
    public DatasetReader(String dir, Configuration conf, long seed, int rank, int world, int tokenBudget) throws IOException {
        if (world < 1 || rank < 0 || rank >= world) {
            throw new IllegalArgumentException("rank " + rank + " is not in [0, world size " + world + ")");
        }
        this.root = new Path(dir);
        this.fs = root.getFileSystem(conf);
        this.seed = seed;
        this.rank = rank;
        this.world = world;
        this.tokenBudget = tokenBudget;
        Path manifestPath = new Path(root, PrepareJob.MANIFEST);
        if (!fs.exists(manifestPath)) {
            throw new IllegalArgumentException(dir + " is not a complete dataset: it has no " + PrepareJob.MANIFEST);
        }
        JsonNode manifest;
        try (InputStream in = fs.open(manifestPath)) {
            manifest = PrepareJob.JSON.readTree(in);
        }
        if (manifest.path("format_version").asInt(-1) != Shard.FORMAT_VERSION) {
            throw new IllegalArgumentException(manifestPath + ": format_version " + manifest.path("format_version")
                    + " is not the supported " + Shard.FORMAT_VERSION);
        }
        Shard.Info first = null;
        int maxLen = 0;
        for (JsonNode s : manifest.path("shards")) {
            String path = s.path("path").asText();
            try (ShardReader r = open(path)) {
                if (first != null && !first.tokenizerSha256().equals(r.info().tokenizerSha256())) {
                    throw new IllegalArgumentException(path + " was made by another tokenizer than " + shards.get(0));
                }
                first = first == null ? r.info() : first;
                maxLen = Math.max(maxLen, r.info().bucketMax());
                for (int b = 0; b < r.batches(); b++) {
                    units.add(new Unit(shards.size(), b));
                }
            }
            shards.add(path);
        }
        if (units.isEmpty()) {
            throw new IllegalArgumentException(dir + " holds no documents");
        }
        if (tokenBudget < maxLen) {
            throw new IllegalArgumentException("token budget " + tokenBudget + " is below the dataset's longest chunk " + maxLen);
        }
        if (units.size() / world >= 1 << 20) {
            throw new IllegalArgumentException(dir + " has " + units.size() + " record batches: over 2^20 per rank, which the "
                    + "position does not encode; use more ranks or larger record batches");
        }
        if (units.size() < world) {
            throw new IllegalArgumentException(dir + " has " + units.size() + " record batches, fewer than the " + world + " ranks");
        }
        this.info = first;
        seek(0);
    }

    private ShardReader open(String shard) throws IOException {
        Path p = new Path(root, shard);
        return new ShardReader(new HadoopChannel(fs, p), allocator, p.toString());
    }

    public Shard.Info info() {
        return info;
    }

    /** This rank's units of an epoch, in the epoch's seeded order. */
    private void startEpoch(int e) {
        int[] all = new int[units.size()];
        for (int i = 0; i < all.length; i++) {
            all[i] = i;
        }
        SplittableRandom r = new SplittableRandom(seed * 1_000_003L + e);
        for (int i = all.length - 1; i > 0; i--) {
            int j = r.nextInt(i + 1);
            int t = all[i];
            all[i] = all[j];
            all[j] = t;
        }
        int[] mine = new int[(all.length - rank + world - 1) / world];
        for (int i = rank, k = 0; i < all.length; i += world) {
            mine[k++] = all[i];
        }
        order = mine;
        epoch = e;
    }

    /** The next batch; the stream never ends (epochs follow one another, a batch never spans two). */
    public Batch next() throws IOException {
        List<int[]> docs = new ArrayList<>();
        List<Long> ids = new ArrayList<>();
        int tokens = 0;
        while (true) {
            if (unitCursor == order.length) {
                if (!docs.isEmpty()) {
                    break; // a batch never spans two epochs
                }
                startEpoch(epoch + 1);
                unitCursor = 0;
                docCursor = 0;
            }
            ShardReader.Batch unit = unit(order[unitCursor]);
            if (docCursor == unit.documents()) {
                unitCursor++;
                docCursor = 0;
                continue;
            }
            int len = unit.offsets()[docCursor + 1] - unit.offsets()[docCursor];
            if (tokens + len > tokenBudget && !docs.isEmpty()) {
                break;
            }
            docs.add(Arrays.copyOfRange(unit.tokens(), unit.offsets()[docCursor], unit.offsets()[docCursor + 1]));
            ids.add(unit.docIds()[docCursor]);
            tokens += len;
            docCursor++;
        }
        int[] all = new int[tokens];
        int[] cu = new int[docs.size() + 1];
        for (int d = 0; d < docs.size(); d++) {
            System.arraycopy(docs.get(d), 0, all, cu[d], docs.get(d).length);
            cu[d + 1] = cu[d] + docs.get(d).length;
        }
        return new Batch(all, cu, ids.stream().mapToLong(Long::longValue).toArray());
    }

    private ShardReader.Batch unit(int u) throws IOException {
        if (u != currentUnit) {
            Unit unit = units.get(u);
            try (ShardReader r = open(shards.get(unit.shard()))) {
                current = r.read(unit.batch());
            }
            currentUnit = u;
        }
        return current;
    }

    /** Whether the last batch ended this rank's epoch: the next one starts the next epoch. */
    public boolean atEpochEnd() throws IOException {
        while (unitCursor < order.length && docCursor == unit(order[unitCursor]).documents()) {
            unitCursor++;
            docCursor = 0;
        }
        return unitCursor == order.length;
    }

    /** Where the stream stands: epoch, record batch and document, packed into one number. */
    public long position() {
        return ((long) epoch << 40) | ((long) unitCursor << 20) | docCursor;
    }

    /** Returns to a {@link #position}. */
    public void seek(long position) {
        int e = (int) (position >>> 40);
        startEpoch(e);
        int u = (int) ((position >>> 20) & 0xFFFFF);
        int d = (int) (position & 0xFFFFF);
        if (u > order.length) {
            throw new IllegalArgumentException("position " + position + " is past this rank's " + order.length + " record batches");
        }
        unitCursor = u;
        docCursor = d;
    }

    @Override
    public void close() {
        allocator.close();
    }
}
