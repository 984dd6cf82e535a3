package org.kindling.data;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.SplittableRandom;
import org.apache.arrow.memory.RootAllocator;
import org.apache.hadoop.conf.Configuration;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The training reader over a dataset of 3 shards × 16-row record batches, read through the Hadoop FileSystem. */
class DatasetReaderTest {
    @TempDir
    static Path dir;
    static Path fixed;
    static Path mixed;
    static final int DOCS = 150;

    /** Writes shards of documents whose ids are their index; {@code lengthOf} gives each one's length. */
    static Path dataset(String name, java.util.function.IntUnaryOperator lengthOf) throws IOException {
        Path root = dir.resolve(name);
        Files.createDirectories(root.resolve("shards"));
        ObjectNode manifest = PrepareJob.JSON.createObjectNode();
        manifest.put("format_version", 1);
        ArrayNode shards = manifest.putArray("shards");
        SplittableRandom r = new SplittableRandom(4);
        try (RootAllocator allocator = new RootAllocator()) {
            for (int s = 0; s < 3; s++) {
                String rel = "shards/part-0000" + s + "-bucket-64.arrow";
                try (ShardWriter w = new ShardWriter(Files.newOutputStream(root.resolve(rel)),
                        new Shard.Info("00".repeat(32), 500, "{}", 1, 64), allocator, 16)) {
                    for (int d = s; d < DOCS; d += 3) {
                        int[] t = new int[lengthOf.applyAsInt(d)];
                        for (int i = 0; i < t.length; i++) {
                            t[i] = r.nextInt(500);
                        }
                        w.write(d, t, 0, t.length);
                    }
                    shards.addObject().put("path", rel).put("bucket", 64).put("rows", w.rows()).put("tokens", w.tokens());
                }
            }
        }
        Files.write(root.resolve("manifest.json"), PrepareJob.JSON.writeValueAsBytes(manifest));
        return root;
    }

    @BeforeAll
    static void write() throws IOException {
        fixed = dataset("fixed", d -> 64);
        mixed = dataset("mixed", d -> 1 + (d * 37) % 64);
    }

    static DatasetReader reader(Path root, long seed, int rank, int world, int budget) throws IOException {
        return new DatasetReader(root.toUri().toString(), new Configuration(), seed, rank, world, budget);
    }

    @Test
    void oneEpochVisitsEveryDocumentOnce() throws IOException {
        try (DatasetReader r = reader(fixed, 1, 0, 1, 64)) {
            Set<Long> seen = new HashSet<>();
            for (int i = 0; i < DOCS; i++) {
                DatasetReader.Batch b = r.next();
                assertEquals(1, b.sequences());
                assertTrue(seen.add(b.docIds()[0]), "document " + b.docIds()[0] + " twice in one epoch");
            }
            assertEquals(DOCS, seen.size());
        }
    }

    @Test
    void epochsEndCleanly() throws IOException {
        try (DatasetReader r = reader(mixed, 5, 0, 1, 200)) {
            Set<Long> seen = new HashSet<>();
            int batches = 0;
            do {
                for (long id : r.next().docIds()) {
                    assertTrue(seen.add(id), "document " + id + " twice in one epoch");
                }
                batches++;
            } while (!r.atEpochEnd());
            assertEquals(DOCS, seen.size(), "one epoch holds every document, in " + batches + " batches");
        }
    }

    @Test
    void ranksReadDisjointSlices() throws IOException {
        Set<Long> zero = new HashSet<>();
        Set<Long> one = new HashSet<>();
        try (DatasetReader a = reader(fixed, 1, 0, 2, 64); DatasetReader b = reader(fixed, 1, 1, 2, 64)) {
            for (int i = 0; i < DOCS / 4; i++) {
                assertTrue(zero.add(a.next().docIds()[0]));
                assertTrue(one.add(b.next().docIds()[0]));
            }
        }
        zero.retainAll(one);
        assertEquals(Set.of(), zero);
    }

    /**
     * A skewed corpus (one document in 7 is 64 tokens, the rest 1–8) read by 3 ranks: at every step
     * the ranks' token counts differ by at most the longest chunk of the step's batches (64 tokens,
     * a quarter of the 256-token budget), every rank's epoch ends at the same step and the epoch holds
     * every document once, read by one rank.
     */
    @Test
    void ranksOfAStepCarryNearlyTheSameTokensAndShareEachEpochExactly() throws IOException {
        Path skewed = dataset("skewed", d -> d % 7 == 0 ? 64 : 1 + d % 8);
        int world = 3;
        DatasetReader[] ranks = new DatasetReader[world];
        try {
            for (int r = 0; r < world; r++) {
                ranks[r] = reader(skewed, 13, r, world, 256);
            }
            for (int epoch = 0; epoch < 3; epoch++) {
                Set<Long> seen = new HashSet<>();
                int steps = 0;
                boolean end;
                do {
                    int min = Integer.MAX_VALUE;
                    int max = 0;
                    int longest = 0;
                    for (DatasetReader r : ranks) {
                        DatasetReader.Batch b = r.next();
                        assertTrue(b.sequences() > 0 && b.tokens().length <= 256, "a batch of " + b.tokens().length + " tokens");
                        min = Math.min(min, b.tokens().length);
                        max = Math.max(max, b.tokens().length);
                        for (int s = 0; s < b.sequences(); s++) {
                            longest = Math.max(longest, b.cuSeqlens()[s + 1] - b.cuSeqlens()[s]);
                            assertTrue(seen.add(b.docIds()[s]), "document " + b.docIds()[s] + " twice in epoch " + epoch);
                        }
                    }
                    assertTrue(max - min <= longest, "epoch " + epoch + " step " + steps + ": ranks hold " + min + " to " + max
                            + " tokens, more apart than the longest chunk " + longest);
                    steps++;
                    end = ranks[0].atEpochEnd();
                    for (DatasetReader r : ranks) {
                        assertEquals(end, r.atEpochEnd(), "every rank's epoch ends at the same step");
                    }
                } while (!end);
                assertEquals(DOCS, seen.size(), "epoch " + epoch + " in " + steps + " steps");
            }
        } finally {
            for (DatasetReader r : ranks) {
                if (r != null) {
                    r.close();
                }
            }
        }
    }

    @Test
    void batchesRespectTheBudgetAndCarryOffsets() throws IOException {
        try (DatasetReader r = reader(mixed, 3, 0, 1, 200)) {
            for (int i = 0; i < 40; i++) {
                DatasetReader.Batch b = r.next();
                assertTrue(b.tokens().length <= 200 && b.tokens().length > 0);
                assertEquals(0, b.cuSeqlens()[0]);
                assertEquals(b.tokens().length, b.cuSeqlens()[b.sequences()]);
                for (int s = 0; s < b.sequences(); s++) {
                    assertEquals(1 + (b.docIds()[s] * 37) % 64, b.cuSeqlens()[s + 1] - b.cuSeqlens()[s], "length of document "
                            + b.docIds()[s]);
                }
            }
        }
    }

    private static List<long[]> take(DatasetReader r, int n) throws IOException {
        List<long[]> out = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            out.add(r.next().docIds());
        }
        return out;
    }

    @Test
    void sameSeedSameOrderAndResumingContinuesExactly() throws IOException {
        List<long[]> straight;
        try (DatasetReader r = reader(mixed, 9, 1, 2, 128)) {
            straight = take(r, 60);
        }
        long position;
        List<long[]> resumed;
        try (DatasetReader r = reader(mixed, 9, 1, 2, 128)) {
            List<long[]> head = take(r, 25);
            for (int i = 0; i < 25; i++) {
                assertArrayEquals(straight.get(i), head.get(i));
            }
            position = r.position();
        }
        try (DatasetReader r = reader(mixed, 9, 1, 2, 128)) {
            r.seek(position);
            resumed = take(r, 35);
        }
        for (int i = 0; i < 35; i++) {
            assertArrayEquals(straight.get(25 + i), resumed.get(i), "batch " + (25 + i));
        }
        try (DatasetReader other = reader(mixed, 10, 1, 2, 128)) {
            List<long[]> different = take(other, 10);
            boolean same = true;
            for (int i = 0; i < 10; i++) {
                same &= java.util.Arrays.equals(different.get(i), straight.get(i));
            }
            assertTrue(!same, "another seed gives another order");
        }
    }

    @Test
    void chunksCarryTheTokensTheirShardHolds() throws IOException {
        java.util.Map<Long, int[]> written = new java.util.HashMap<>();
        try (RootAllocator allocator = new RootAllocator()) {
            for (int s = 0; s < 3; s++) {
                Path p = mixed.resolve("shards/part-0000" + s + "-bucket-64.arrow");
                try (ShardReader r = new ShardReader(Files.newByteChannel(p), allocator, p.toString())) {
                    for (int b = 0; b < r.batches(); b++) {
                        ShardReader.Batch batch = r.read(b);
                        for (int d = 0; d < batch.documents(); d++) {
                            written.put(batch.docIds()[d], java.util.Arrays.copyOfRange(batch.tokens(), batch.offsets()[d],
                                    batch.offsets()[d + 1]));
                        }
                    }
                }
            }
        }
        try (DatasetReader r = reader(mixed, 2, 0, 1, 200)) {
            assertEquals(DOCS, r.chunks());
            int seen = 0;
            do {
                DatasetReader.Batch b = r.next();
                for (int d = 0; d < b.sequences(); d++, seen++) {
                    assertArrayEquals(written.get(b.docIds()[d]), java.util.Arrays.copyOfRange(b.tokens(), b.cuSeqlens()[d],
                            b.cuSeqlens()[d + 1]), "tokens of document " + b.docIds()[d]);
                }
            } while (!r.atEpochEnd());
            assertEquals(DOCS, seen);
        }
    }

    /**
     * Batch-stream statistics against an i.i.d. shuffle of the same chunks: 400 documents of 4
     * consecutive 64-token chunks, stored in order in 16-row record batches (record batch = doc / 4),
     * read as batches of 8 chunks over 5 epochs. A reader that shuffled record batches would put
     * pieces of one document together in almost every batch and draw each batch from 1–2 record
     * batches; an i.i.d. shuffle does so in ≈ 5 % of batches and draws from ≈ 7.7. The tolerances are
     * over 3 standard deviations of the 1,000-batch estimates.
     */
    @Test
    void batchesMixTheCorpusLikeAnIidShuffle() throws IOException {
        int docs = 400;
        int pieces = 4;
        Path root = dir.resolve("pieces");
        Files.createDirectories(root.resolve("shards"));
        ObjectNode manifest = PrepareJob.JSON.createObjectNode();
        manifest.put("format_version", 1);
        try (RootAllocator allocator = new RootAllocator();
             ShardWriter w = new ShardWriter(Files.newOutputStream(root.resolve("shards/part-00000-bucket-64.arrow")),
                     new Shard.Info("00".repeat(32), 500, "{}", 1, 64), allocator, 16)) {
            for (int d = 0; d < docs; d++) {
                for (int p = 0; p < pieces; p++) {
                    w.write(d, new int[64], 0, 64);
                }
            }
            manifest.putArray("shards").addObject().put("path", "shards/part-00000-bucket-64.arrow").put("bucket", 64);
        }
        Files.write(root.resolve("manifest.json"), PrepareJob.JSON.writeValueAsBytes(manifest));
        List<long[]> stream = new ArrayList<>();
        try (DatasetReader r = reader(root, 11, 0, 1, 8 * 64)) {
            for (int i = 0; i < 5 * docs * pieces / 8; i++) {
                stream.add(r.next().docIds());
            }
        }
        List<long[]> iid = new ArrayList<>();
        List<Long> chunks = new ArrayList<>();
        for (long d = 0; d < docs; d++) {
            for (int p = 0; p < pieces; p++) {
                chunks.add(d);
            }
        }
        java.util.Random rnd = new java.util.Random(5);
        for (int e = 0; e < 5; e++) {
            java.util.Collections.shuffle(chunks, rnd);
            for (int i = 0; i < chunks.size(); i += 8) {
                iid.add(chunks.subList(i, i + 8).stream().mapToLong(Long::longValue).toArray());
            }
        }
        double[] reader = stats(stream);
        double[] expected = stats(iid);
        assertTrue(reader[0] <= expected[0] + 0.025, "share of batches holding two pieces of one document: " + reader[0]
                + " vs " + expected[0] + " for an i.i.d. shuffle");
        assertTrue(reader[1] >= expected[1] - 0.05, "record batches per batch: " + reader[1] + " vs " + expected[1]
                + " for an i.i.d. shuffle");
    }

    /** [share of batches with two chunks of one document, mean distinct record batches (doc / 4) per batch]. */
    private static double[] stats(List<long[]> batches) {
        int repeats = 0;
        double spread = 0;
        for (long[] b : batches) {
            Set<Long> docs = new HashSet<>();
            Set<Long> recordBatches = new HashSet<>();
            for (long d : b) {
                docs.add(d);
                recordBatches.add(d / 4);
            }
            repeats += docs.size() < b.length ? 1 : 0;
            spread += recordBatches.size();
        }
        return new double[] {(double) repeats / batches.size(), spread / batches.size()};
    }

    @Test
    void refusesIncompleteDatasetsAndImpossibleSettings() throws IOException {
        Path incomplete = dir.resolve("incomplete");
        Files.createDirectories(incomplete);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> reader(incomplete, 1, 0, 1, 64));
        assertTrue(e.getMessage().contains("no manifest.json"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> reader(fixed, 1, 0, 1, 32));
        assertTrue(e.getMessage().contains("token budget 32"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> reader(fixed, 1, 2, 2, 64));
        assertTrue(e.getMessage().contains("rank 2"), e.getMessage());
    }
}
