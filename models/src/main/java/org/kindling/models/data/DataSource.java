package org.kindling.models.data;

/**
 * An endless, resumable stream of training batches. The position is an opaque count that
 * {@link #seek} restores exactly, so a resumed run sees the same batches it would have seen.
 */
public interface DataSource {
    TokenBatch next();

    long position();

    void seek(long position);

    /** A source whose batch at each position is a pure function of the position. */
    static DataSource indexed(java.util.function.LongFunction<TokenBatch> batchAt) {
        return new DataSource() {
            private long position;

            @Override
            public TokenBatch next() {
                return batchAt.apply(position++);
            }

            @Override
            public long position() {
                return position;
            }

            @Override
            public void seek(long p) {
                position = p;
            }
        };
    }
}
