package org.kindling.data;

import com.fasterxml.jackson.databind.JsonNode;
import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import org.apache.arrow.memory.BufferAllocator;
import org.apache.arrow.memory.RootAllocator;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;

/**
 * Reads a prepared dataset for training, as an endless stream of packed batches of at most
 * {@code tokenBudget} tokens: the token ids of whole chunks (documents, or pieces of long ones)
 * back to back, with their offsets ({@code cu_seqlens}) and document ids. Every epoch draws a
 * seeded permutation of every chunk of every shard, as an i.i.d. shuffle would: neighbouring
 * chunks of a record batch (consecutive documents, consecutive pieces of one document, one length
 * bucket) do not train together.
 *
 * <p>Every rank plans the whole epoch from the chunk index alone (the same plan on every rank, from
 * the seed and the epoch), so that the ranks' batches of one step carry nearly the same work: a data
 * parallel step waits for its slowest rank. A step takes the next chunks of the permutation (first
 * those an earlier step could not place) up to {@code world × tokenBudget} tokens and deals them
 * longest first, each to the rank with the fewest tokens so far (ties: the least Σ length², the
 * attention's quadratic part) that still has room; a chunk no rank has room for goes to the next
 * step. So the ranks' token counts of a step differ by at most the longest chunk, every rank has a
 * batch at every step (empty only at an epoch's last step when the budget is below twice the
 * longest chunk) and its epoch ends at the same step as every other's, and every chunk is read
 * once per epoch, by one rank. Chunks are read one by one from their place in the shard ({@link
 * ShardReader#readTokens}) by the rank they were dealt to; only an index of 24 bytes per chunk stays
 * in memory. {@link #position} / {@link #seek} resume exactly.
 */
public final class DatasetReader implements AutoCloseable {
    /** Token ids of sequences back to back; sequence s is tokens[cuSeqlens[s] .. cuSeqlens[s+1]). */
    public record Batch(int[] tokens, int[] cuSeqlens, long[] docIds) {
        public int sequences() {
            return docIds.length;
        }
    }

    /** Shards kept open at once: enough for locality, few enough for HDFS's open streams. */
    private static final int OPEN_SHARDS = 64;
    private static final int CURSOR_BITS = 40;

    private final FileSystem fs;
    private final Path root;
    private final List<String> shards = new ArrayList<>();
    /** Per chunk: its shard, the byte offset of its first token id, its length in tokens, its document. */
    private final int[] chunkShard;
    private final long[] chunkStart;
    private final int[] chunkLength;
    private final long[] chunkDoc;
    private final long seed;
    private final int rank;
    private final int world;
    private final int tokenBudget;
    private final Shard.Info info;
    private final BufferAllocator allocator = new RootAllocator();
    private final Map<Integer, ShardReader> open = new LinkedHashMap<>(16, 0.75f, true);

    /** This rank's chunks of the epoch, batch after batch; batch b is order[batchStart[b] .. batchStart[b+1]). */
    private int[] order;
    private int[] batchStart;
    private int epoch = -1;
    private int cursor;

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
        List<List<ShardReader.Layout>> layouts = new ArrayList<>();
        long chunks = 0;
        for (JsonNode s : manifest.path("shards")) {
            String path = s.path("path").asText();
            try (ShardReader r = open(path)) {
                if (first != null && !first.tokenizerSha256().equals(r.info().tokenizerSha256())) {
                    throw new IllegalArgumentException(path + " was made by another tokenizer than " + shards.get(0));
                }
                first = first == null ? r.info() : first;
                maxLen = Math.max(maxLen, r.info().bucketMax());
                List<ShardReader.Layout> shardLayouts = new ArrayList<>();
                for (int b = 0; b < r.batches(); b++) {
                    ShardReader.Layout layout = r.layout(b);
                    shardLayouts.add(layout);
                    chunks += layout.documents();
                }
                layouts.add(shardLayouts);
            }
            shards.add(path);
        }
        if (chunks == 0) {
            throw new IllegalArgumentException(dir + " holds no documents");
        }
        if (chunks > Integer.MAX_VALUE - 8) {
            throw new IllegalArgumentException(dir + " has " + chunks + " chunks, more than one reader indexes (2^31)");
        }
        if (chunks < world) {
            throw new IllegalArgumentException(dir + " has " + chunks + " chunks, fewer than the " + world + " ranks");
        }
        if (tokenBudget < maxLen) {
            throw new IllegalArgumentException("token budget " + tokenBudget + " is below the dataset's longest chunk " + maxLen);
        }
        this.info = first;
        int n = (int) chunks;
        chunkShard = new int[n];
        chunkStart = new long[n];
        chunkLength = new int[n];
        chunkDoc = new long[n];
        int c = 0;
        for (int sh = 0; sh < layouts.size(); sh++) {
            for (ShardReader.Layout l : layouts.get(sh)) {
                for (int d = 0; d < l.documents(); d++, c++) {
                    chunkShard[c] = sh;
                    chunkStart[c] = l.valuesStart() + (long) l.offsets()[d] * Integer.BYTES;
                    chunkLength[c] = l.offsets()[d + 1] - l.offsets()[d];
                    chunkDoc[c] = l.docIds()[d];
                    if (chunkLength[c] > maxLen) {
                        throw new IllegalArgumentException(shards.get(sh) + ": a chunk of document " + chunkDoc[c] + " has "
                                + chunkLength[c] + " tokens, more than its bucket's " + maxLen);
                    }
                }
            }
        }
        seek(0);
    }

    private ShardReader open(String shard) throws IOException {
        Path p = new Path(root, shard);
        return new ShardReader(new HadoopChannel(fs, p), allocator, p.toString());
    }

    public Shard.Info info() {
        return info;
    }

    /** The number of chunks (documents and pieces of long documents) in the dataset. */
    public int chunks() {
        return chunkLength.length;
    }

    /** This rank's batches of an epoch: its share of every step of the epoch's plan. */
    private void startEpoch(int e) {
        int[] all = new int[chunkLength.length];
        for (int i = 0; i < all.length; i++) {
            all[i] = i;
        }
        SplittableRandom r = new SplittableRandom(mix(mix(seed) + e));
        for (int i = all.length - 1; i > 0; i--) {
            int j = r.nextInt(i + 1);
            int t = all[i];
            all[i] = all[j];
            all[j] = t;
        }
        List<int[][]> steps = BalancedPlan.steps(all, chunkLength, world, tokenBudget);
        int total = 0;
        for (int[][] step : steps) {
            total += step[rank].length;
        }
        int[] mine = new int[total];
        int[] starts = new int[steps.size() + 1];
        for (int s = 0, k = 0; s < steps.size(); s++) {
            int[] batch = steps.get(s)[rank];
            System.arraycopy(batch, 0, mine, k, batch.length);
            k += batch.length;
            starts[s + 1] = k;
        }
        order = mine;
        batchStart = starts;
        epoch = e;
    }

    /** SplitMix64's finaliser: nearby seeds (S, S+1; epoch e, e+1) give unrelated streams. */
    private static long mix(long z) {
        z = (z ^ (z >>> 30)) * 0xbf58476d1ce4e5b9L;
        z = (z ^ (z >>> 27)) * 0x94d049bb133111ebL;
        return z ^ (z >>> 31);
    }

    /** The next batch; the stream never ends (epochs follow one another, a batch never spans two). */
    public Batch next() throws IOException {
        if (cursor == batchStart.length - 1) {
            startEpoch(epoch + 1);
            cursor = 0;
        }
        int from = batchStart[cursor];
        int end = batchStart[cursor + 1];
        int tokens = 0;
        for (int i = from; i < end; i++) {
            tokens += chunkLength[order[i]];
        }
        int[] all = new int[tokens];
        int[] cu = new int[end - from + 1];
        long[] ids = new long[end - from];
        for (int i = from; i < end; i++) {
            int c = order[i];
            int s = i - from;
            int[] t = reader(chunkShard[c]).readTokens(chunkStart[c], 0, chunkLength[c]);
            System.arraycopy(t, 0, all, cu[s], t.length);
            cu[s + 1] = cu[s] + t.length;
            ids[s] = chunkDoc[c];
        }
        cursor++;
        return new Batch(all, cu, ids);
    }

    private ShardReader reader(int shard) throws IOException {
        ShardReader r = open.get(shard);
        if (r == null) {
            if (open.size() == OPEN_SHARDS) {
                Map.Entry<Integer, ShardReader> eldest = open.entrySet().iterator().next();
                open.remove(eldest.getKey());
                eldest.getValue().close();
            }
            r = open(shards.get(shard));
            open.put(shard, r);
        }
        return r;
    }

    /** Whether the last batch ended this rank's epoch: the next one starts the next epoch. */
    public boolean atEpochEnd() {
        return cursor == batchStart.length - 1;
    }

    /** Where the stream stands: the epoch and how many of its batches (steps) were read, in one number. */
    public long position() {
        return ((long) epoch << CURSOR_BITS) | cursor;
    }

    /** Returns to a {@link #position}. */
    public void seek(long position) {
        int e = (int) (position >>> CURSOR_BITS);
        long c = position & ((1L << CURSOR_BITS) - 1);
        startEpoch(e);
        if (c > batchStart.length - 1) {
            throw new IllegalArgumentException("position " + position + " is past the " + (batchStart.length - 1)
                    + " batches of epoch " + e);
        }
        cursor = (int) c;
    }

    @Override
    public void close() {
        IOException failed = null;
        for (ShardReader r : open.values()) {
            try {
                r.close();
            } catch (IOException e) {
                failed = failed == null ? e : failed;
            }
        }
        open.clear();
        allocator.close();
        if (failed != null) {
            throw new UncheckedIOException("cannot close a shard of " + root + ": " + failed.getMessage(), failed);
        }
    }
}
