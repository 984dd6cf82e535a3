package org.kindling.train;

import java.io.IOException;
import java.io.UncheckedIOException;
import org.kindling.data.DatasetReader;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.TokenBatch;

/** A prepared dataset as the trainer's data source: the reader's packed batches as token batches. */
public final class DatasetSource implements DataSource, AutoCloseable {
    private final DatasetReader reader;

    public DatasetSource(DatasetReader reader) {
        this.reader = reader;
    }

    @Override
    public TokenBatch next() {
        try {
            DatasetReader.Batch b = reader.next();
            return new TokenBatch(b.tokens(), b.cuSeqlens());
        } catch (IOException e) {
            throw new UncheckedIOException("cannot read the next batch: " + e.getMessage(), e);
        }
    }

    @Override
    public long position() {
        return reader.position();
    }

    @Override
    public void seek(long position) {
        reader.seek(position);
    }

    @Override
    public void close() {
        reader.close();
    }
}
