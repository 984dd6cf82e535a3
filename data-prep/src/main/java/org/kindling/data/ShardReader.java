package org.kindling.data;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.SeekableByteChannel;
import java.util.List;
import org.apache.arrow.flatbuf.MessageHeader;
import org.apache.arrow.flatbuf.RecordBatch;
import org.apache.arrow.memory.ArrowBuf;
import org.apache.arrow.memory.BufferAllocator;
import org.apache.arrow.vector.BigIntVector;
import org.apache.arrow.vector.IntVector;
import org.apache.arrow.vector.TypeLayout;
import org.apache.arrow.vector.VectorSchemaRoot;
import org.apache.arrow.vector.complex.ListVector;
import org.apache.arrow.vector.ipc.ArrowFileReader;
import org.apache.arrow.vector.ipc.ReadChannel;
import org.apache.arrow.vector.ipc.message.ArrowBlock;
import org.apache.arrow.vector.ipc.message.MessageMetadataResult;
import org.apache.arrow.vector.ipc.message.MessageSerializer;
import org.apache.arrow.vector.types.pojo.Field;
import org.apache.arrow.vector.types.pojo.Schema;

/**
 * Reads a shard record batch by record batch. Each batch comes out as host arrays: the token ids,
 * their offsets (cu_seqlens) and the document ids; the Arrow buffers are released as soon as they
 * are copied, so nothing stays allocated between calls. {@link #layout} and {@link #readTokens} read
 * single documents without loading their record batch, for readers that visit documents in a
 * random order.
 */
public final class ShardReader implements AutoCloseable {
    /** One record batch of documents: document d is tokens[offsets[d] .. offsets[d+1]). */
    public record Batch(int[] tokens, int[] offsets, long[] docIds) {
        public int documents() {
            return docIds.length;
        }
    }

    /**
     * Where record batch i's documents lie in the file: document d's token ids are the Int32s
     * [offsets[d], offsets[d+1]) of the values buffer that starts at byte {@code valuesStart}.
     */
    public record Layout(long valuesStart, int[] offsets, long[] docIds) {
        public int documents() {
            return docIds.length;
        }
    }

    private final SeekableByteChannel channel;
    private final ArrowFileReader reader;
    private final List<ArrowBlock> blocks;
    private final Shard.Info info;
    private final String source;
    /** Indices in a record batch's buffer list (validity precedes each): list offsets, token values, doc ids. */
    private final int offsetsBuffer;
    private final int valuesBuffer;
    private final int docIdBuffer;

    public ShardReader(SeekableByteChannel channel, BufferAllocator allocator, String source) throws IOException {
        this.source = source;
        this.channel = channel;
        this.reader = new ArrowFileReader(channel, allocator);
        try {
            Schema schema = reader.getVectorSchemaRoot().getSchema();
            this.info = Shard.Info.fromMetadata(schema.getCustomMetadata(), source);
            if (!schema.getFields().equals(Shard.schema(info).getFields())) {
                throw new IllegalArgumentException(source + ": expected columns tokens: List<Int32> and doc_id: Int64, got "
                        + schema.getFields());
            }
            this.blocks = reader.getRecordBlocks();
            int[] first = firstBuffers(schema);
            this.offsetsBuffer = first[0] + 1;
            this.valuesBuffer = first[1] + 1;
            this.docIdBuffer = first[2] + 1;
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

    /** Record batch {@code i}'s layout, from its message header and its offsets and doc_id buffers only. */
    public Layout layout(int i) throws IOException {
        ArrowBlock block = blocks.get(i);
        long bodyStart = block.getOffset() + block.getMetadataLength();
        if (block.getOffset() < 0 || block.getBodyLength() < 0 || bodyStart + block.getBodyLength() > channel.size()) {
            throw new CorruptShardException(source + ": record batch " + i + " lies outside the file", null);
        }
        channel.position(block.getOffset());
        MessageMetadataResult meta;
        try {
            meta = MessageSerializer.readMessage(new ReadChannel(channel));
        } catch (RuntimeException e) {
            throw new CorruptShardException(source + ": record batch " + i + " has an unreadable header: " + e.getMessage(), e);
        }
        if (meta == null || meta.headerType() != MessageHeader.RecordBatch) {
            throw new CorruptShardException(source + ": record batch " + i + " has no record batch header", null);
        }
        RecordBatch header = (RecordBatch) meta.getMessage().header(new RecordBatch());
        if (header.compression() != null) {
            throw new CorruptShardException(source + ": record batch " + i + " is compressed, which Kindling shards never are", null);
        }
        if (header.buffersLength() <= Math.max(docIdBuffer, valuesBuffer)) {
            throw new CorruptShardException(source + ": record batch " + i + " has " + header.buffersLength() + " buffers, too few", null);
        }
        long rows = header.length();
        ByteBuffer offsetBytes = readBuffer(i, header, offsetsBuffer, bodyStart, block, (rows + 1) * Integer.BYTES);
        ByteBuffer idBytes = readBuffer(i, header, docIdBuffer, bodyStart, block, rows * Long.BYTES);
        long values = header.buffers(valuesBuffer).length() / Integer.BYTES;
        int[] offsets = new int[(int) rows + 1];
        long[] docIds = new long[(int) rows];
        for (int d = 0; d <= rows; d++) {
            offsets[d] = offsetBytes.getInt();
            if (offsets[d] < (d == 0 ? 0 : offsets[d - 1]) || offsets[d] > values) {
                throw new CorruptShardException(source + ": record batch " + i + " has a bad token offset at document " + d, null);
            }
        }
        for (int d = 0; d < rows; d++) {
            docIds[d] = idBytes.getLong();
        }
        return new Layout(bodyStart + header.buffers(valuesBuffer).offset(), offsets, docIds);
    }

    /** Buffer {@code b} of a record batch, which must hold at least {@code need} bytes inside the batch's body. */
    private ByteBuffer readBuffer(int i, RecordBatch header, int b, long bodyStart, ArrowBlock block, long need)
            throws IOException {
        long offset = header.buffers(b).offset();
        long length = header.buffers(b).length();
        if (offset < 0 || length < need || offset + length > block.getBodyLength() || need > Integer.MAX_VALUE) {
            throw new CorruptShardException(source + ": record batch " + i + " buffer " + b + " (" + length + " bytes at " + offset
                    + ") does not hold its " + need + " bytes inside the " + block.getBodyLength() + "-byte body", null);
        }
        return read(bodyStart + offset, (int) need);
    }

    /** Token ids [from, to) of the values buffer starting at byte {@code valuesStart} (from a {@link Layout}). */
    public int[] readTokens(long valuesStart, int from, int to) throws IOException {
        ByteBuffer bytes = read(valuesStart + (long) from * Integer.BYTES, (to - from) * Integer.BYTES);
        int[] ids = new int[to - from];
        bytes.asIntBuffer().get(ids);
        return ids;
    }

    private ByteBuffer read(long position, int n) throws IOException {
        ByteBuffer buf = ByteBuffer.allocate(n).order(ByteOrder.LITTLE_ENDIAN);
        channel.position(position);
        while (buf.hasRemaining()) {
            if (channel.read(buf) < 0) {
                throw new CorruptShardException(source + ": ends before byte " + (position + n) + " (truncated?)", null);
            }
        }
        return buf.flip();
    }

    /** The index of the first buffer of the tokens list, its Int32 child and doc_id, in Arrow's depth-first buffer order. */
    private int[] firstBuffers(Schema schema) {
        int[] first = new int[3];
        int next = 0;
        for (Field f : schema.getFields()) {
            if (f.getName().equals(Shard.TOKENS)) {
                first[0] = next;
                next += TypeLayout.getTypeBufferCount(f.getType());
                first[1] = next;
                next += TypeLayout.getTypeBufferCount(f.getChildren().get(0).getType());
            } else {
                first[2] = next;
                next += TypeLayout.getTypeBufferCount(f.getType());
            }
        }
        return first;
    }

    @Override
    public void close() throws IOException {
        reader.close();
    }
}
