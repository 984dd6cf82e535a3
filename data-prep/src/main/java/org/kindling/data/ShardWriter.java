package org.kindling.data;

import java.io.IOException;
import java.io.OutputStream;
import java.nio.channels.Channels;
import org.apache.arrow.memory.BufferAllocator;
import org.apache.arrow.vector.BigIntVector;
import org.apache.arrow.vector.IntVector;
import org.apache.arrow.vector.VectorSchemaRoot;
import org.apache.arrow.vector.complex.ListVector;
import org.apache.arrow.vector.ipc.ArrowFileWriter;

/**
 * Writes one shard: documents appended in order, flushed as Arrow record batches of at most
 * {@code batchRows} documents. Close it to write the file footer; the stream is closed too.
 */
public final class ShardWriter implements AutoCloseable {
    private final VectorSchemaRoot root;
    private final ArrowFileWriter writer;
    private final ListVector tokens;
    private final IntVector values;
    private final BigIntVector docIds;
    private final int batchRows;
    private final OutputStream out;
    private int rows;
    private int valueCount;
    private long totalRows;
    private long totalTokens;

    public ShardWriter(OutputStream out, Shard.Info info, BufferAllocator allocator, int batchRows) throws IOException {
        if (batchRows < 1) {
            throw new IllegalArgumentException("batchRows must be at least 1, got " + batchRows);
        }
        this.out = out;
        this.batchRows = batchRows;
        this.root = VectorSchemaRoot.create(Shard.schema(info), allocator);
        this.tokens = (ListVector) root.getVector(Shard.TOKENS);
        this.values = (IntVector) tokens.getDataVector();
        this.docIds = (BigIntVector) root.getVector(Shard.DOC_ID);
        this.writer = new ArrowFileWriter(root, null, Channels.newChannel(out));
        writer.start();
        reset();
    }

    private void reset() {
        root.clear();
        tokens.allocateNew();
        docIds.allocateNew();
        rows = 0;
        valueCount = 0;
    }

    /** Appends one document's token ids. */
    public void write(long docId, int[] ids, int from, int to) throws IOException {
        tokens.startNewValue(rows);
        for (int i = from; i < to; i++) {
            values.setSafe(valueCount++, ids[i]);
        }
        tokens.endValue(rows, to - from);
        docIds.setSafe(rows, docId);
        rows++;
        totalRows++;
        totalTokens += to - from;
        if (rows == batchRows) {
            flush();
        }
    }

    private void flush() throws IOException {
        if (rows == 0) {
            return;
        }
        values.setValueCount(valueCount);
        tokens.setValueCount(rows);
        docIds.setValueCount(rows);
        root.setRowCount(rows);
        writer.writeBatch();
        reset();
    }

    public long rows() {
        return totalRows;
    }

    public long tokens() {
        return totalTokens;
    }

    @Override
    public void close() throws IOException {
        try {
            flush();
            writer.end();
        } finally {
            writer.close();
            root.close();
            out.close();
        }
    }
}
