package org.kindling.data;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.channels.SeekableByteChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import org.apache.arrow.memory.BufferAllocator;
import org.apache.arrow.memory.RootAllocator;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Shards written and read back through Arrow; the root allocator is closed after each test, so a leak fails it. */
class ShardTest {
    private static final Shard.Info INFO = new Shard.Info("ab".repeat(32), 1000, "{\"<|endoftext|>\":999}", 129, 256);

    @TempDir
    Path dir;
    private BufferAllocator allocator;

    @BeforeEach
    void open() {
        allocator = new RootAllocator();
    }

    @AfterEach
    void close() {
        allocator.close();
    }

    private List<int[]> documents(int n, long seed) {
        SplittableRandom r = new SplittableRandom(seed);
        List<int[]> docs = new ArrayList<>();
        for (int d = 0; d < n; d++) {
            int[] t = new int[d == 3 ? 0 : 1 + r.nextInt(300)];
            for (int i = 0; i < t.length; i++) {
                t[i] = r.nextInt(1000);
            }
            docs.add(t);
        }
        return docs;
    }

    @Test
    void documentsRoundTripAcrossRecordBatches() throws IOException {
        Path file = dir.resolve("part-00000-bucket-256.arrow");
        List<int[]> docs = documents(250, 1);
        try (ShardWriter w = new ShardWriter(Files.newOutputStream(file), INFO, allocator, 64)) {
            for (int d = 0; d < docs.size(); d++) {
                w.write(1000 + d, docs.get(d), 0, docs.get(d).length);
            }
            assertEquals(250, w.rows());
        }
        List<int[]> back = new ArrayList<>();
        List<Long> ids = new ArrayList<>();
        try (SeekableByteChannel ch = Files.newByteChannel(file); ShardReader r = new ShardReader(ch, allocator, file.toString())) {
            assertEquals(INFO, r.info());
            assertEquals(4, r.batches());
            for (int b = 0; b < r.batches(); b++) {
                ShardReader.Batch batch = r.read(b);
                assertEquals(0, batch.offsets()[0]);
                for (int d = 0; d < batch.documents(); d++) {
                    back.add(java.util.Arrays.copyOfRange(batch.tokens(), batch.offsets()[d], batch.offsets()[d + 1]));
                    ids.add(batch.docIds()[d]);
                }
            }
        }
        assertEquals(docs.size(), back.size());
        for (int d = 0; d < docs.size(); d++) {
            assertArrayEquals(docs.get(d), back.get(d), "document " + d);
            assertEquals(1000L + d, ids.get(d));
        }
    }

    @Test
    void sameDocumentsGiveByteIdenticalFiles() throws IOException {
        List<int[]> docs = documents(100, 2);
        Path a = dir.resolve("a.arrow");
        Path b = dir.resolve("b.arrow");
        for (Path p : List.of(a, b)) {
            try (ShardWriter w = new ShardWriter(Files.newOutputStream(p), INFO, allocator, 30)) {
                for (int d = 0; d < docs.size(); d++) {
                    w.write(d, docs.get(d), 0, docs.get(d).length);
                }
            }
        }
        assertArrayEquals(Files.readAllBytes(a), Files.readAllBytes(b));
    }

    @Test
    void metadataIsWrittenInSortedKeyOrderSoFilesMatchAcrossJvms() {
        // Arrow copies the metadata into a HashMap, whose order for colliding keys is their insertion order: the order
        // given must be fixed. Map.of's is salted per JVM, so one run cannot see two orders, but any unsorted one shows it.
        List<String> keys = new ArrayList<>(INFO.metadata().keySet());
        List<String> sorted = new ArrayList<>(keys);
        sorted.sort(null);
        assertEquals(6, keys.size());
        assertEquals(sorted, keys);
    }

    @Test
    void truncatedAndForeignFilesNameTheFile() throws IOException {
        Path file = dir.resolve("s.arrow");
        List<int[]> docs = documents(20, 3);
        try (ShardWriter w = new ShardWriter(Files.newOutputStream(file), INFO, allocator, 8)) {
            for (int[] d : docs) {
                w.write(0, d, 0, d.length);
            }
        }
        byte[] whole = Files.readAllBytes(file);
        Files.write(file, java.util.Arrays.copyOf(whole, whole.length / 2));
        // Marked corrupt: training fails at once on it instead of retrying.
        IOException e = assertThrows(CorruptShardException.class, () -> {
            try (SeekableByteChannel ch = Files.newByteChannel(file); ShardReader r = new ShardReader(ch, allocator, file.toString())) {
                r.read(0);
            }
        });
        assertTrue(e.getMessage().startsWith(file.toString()), e.getMessage());
        Files.writeString(file, "name,text\n1,hello\n");
        e = assertThrows(CorruptShardException.class, () -> {
            try (SeekableByteChannel ch = Files.newByteChannel(file); ShardReader r = new ShardReader(ch, allocator, file.toString())) {
                r.read(0);
            }
        });
        assertTrue(e.getMessage().contains("not a readable Arrow IPC file"), e.getMessage());
    }

    @Test
    void metadataErrorsNameTheKey() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> Shard.Info.fromMetadata(java.util.Map.of(), "x.arrow"));
        assertTrue(e.getMessage().contains("not a Kindling shard"), e.getMessage());
        java.util.Map<String, String> m = new java.util.HashMap<>(INFO.metadata());
        m.remove(Shard.META_VOCAB);
        e = assertThrows(IllegalArgumentException.class, () -> Shard.Info.fromMetadata(m, "x.arrow"));
        assertTrue(e.getMessage().contains(Shard.META_VOCAB), e.getMessage());
    }
}
