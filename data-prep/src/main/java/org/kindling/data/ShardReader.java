package org.kindling.data;

import java.io.IOException;
import java.nio.channels.SeekableByteChannel;
import java.util.List;
import org.apache.arrow.memory.ArrowBuf;
import org.apache.arrow.memory.BufferAllocator;
import org.apache.arrow.vector.BigIntVector;
import org.apache.arrow.vector.IntVector;
import org.apache.arrow.vector.VectorSchemaRoot;
import org.apache.arrow.vector.complex.ListVector;
import org.apache.arrow.vector.ipc.ArrowFileReader;
import org.apache.arrow.vector.ipc.message.ArrowBlock;
import org.apache.arrow.vector.types.pojo.Schema;

/**
 * Reads a shard record batch by record batch. Each batch comes out as host arrays: the token ids,
 * their offsets (cu_seqlens) and the document ids; the Arrow buffers are released as soon as they
 * are copied, so nothing stays allocated between calls.
 */
public final class ShardReader implements AutoCloseable {
    /** One record batch of documents: document d is tokens[offsets[d] .. offsets[d+1]). */
    public record Batch(int[] tokens, int[] offsets, long[] docIds) {
        public int documents() {
            return docIds.length;
        }
    }

    private final ArrowFileReader reader;
    private final List<ArrowBlock> blocks;
    private final Shard.Info info;
    private final String source;

    public ShardReader(SeekableByteChannel channel, BufferAllocator allocator, String source) throws IOException {
        this.source = source;
        this.reader = new ArrowFileReader(channel, allocator);
        try {
            Schema schema = reader.getVectorSchemaRoot().getSchema();
            this.info = Shard.Info.fromMetadata(schema.getCustomMetadata(), source);
            if (schema.getFields().size() != 2 || schema.findField(Shard.TOKENS) == null || schema.findField(Shard.DOC_ID) == null) {
                throw new IllegalArgumentException(source + ": expected columns tokens: List<Int32> and doc_id: Int64, got "
                        + schema.getFields());
            }
            this.blocks = reader.getRecordBlocks();
        } catch (IllegalArgumentException e) {
            reader.close();
            throw e;
        } catch (IOException e) {
            reader.close();
            throw new IOException(source + ": cannot read: " + e.getMessage(), e);
        } catch (RuntimeException e) {
            // Arrow reports a malformed file (a truncated one: no footer) with unchecked exceptions.
            reader.close();
            throw new CorruptShardException(source + ": not a readable Arrow IPC file (truncated or corrupt): " + e.getMessage(), e);
        }
    }

    public Shard.Info info() {
        return info;
    }

    public int batches() {
        return blocks.size();
    }

    /** Record batch {@code i}, copied to the host. */
    public Batch read(int i) throws IOException {
        try {
            if (!reader.loadRecordBatch(blocks.get(i))) {
                throw new CorruptShardException(source + ": record batch " + i + " is missing", null);
            }
        } catch (RuntimeException e) {
            throw new CorruptShardException(source + ": record batch " + i + " is corrupt: " + e.getMessage(), e);
        }
        VectorSchemaRoot root = reader.getVectorSchemaRoot();
        ListVector list = (ListVector) root.getVector(Shard.TOKENS);
        IntVector values = (IntVector) list.getDataVector();
        BigIntVector ids = (BigIntVector) root.getVector(Shard.DOC_ID);
        int rows = root.getRowCount();
        int[] offsets = new int[rows + 1];
        ArrowBuf offsetBuf = list.getOffsetBuffer();
        for (int r = 0; r <= rows; r++) {
            offsets[r] = offsetBuf.getInt((long) r * ListVector.OFFSET_WIDTH);
        }
        int base = offsets[0];
        int[] tokens = new int[offsets[rows] - base];
        for (int t = 0; t < tokens.length; t++) {
            tokens[t] = values.get(base + t);
        }
        for (int r = 0; r <= rows; r++) {
            offsets[r] -= base;
        }
        long[] docIds = new long[rows];
        for (int r = 0; r < rows; r++) {
            docIds[r] = ids.get(r);
        }
        return new Batch(tokens, offsets, docIds);
    }

    @Override
    public void close() throws IOException {
        reader.close();
    }
}
