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
            return tokens(b);
        } catch (IOException e) {
            throw new UncheckedIOException("cannot read the next batch: " + e.getMessage(), e);
        }
    }

    /**
     * A reader's batch as the trainer's: an empty one (a rank's share of an epoch's last step when no
     * chunk was left for it) becomes a batch of one empty sequence, which predicts nothing.
     */
    static TokenBatch tokens(DatasetReader.Batch b) {
        return new TokenBatch(b.tokens(), b.sequences() == 0 ? new int[] {0, 0} : b.cuSeqlens());
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
