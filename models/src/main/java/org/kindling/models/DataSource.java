package org.kindling.models;

/**
 * An endless, resumable stream of training batches. The position is an opaque count that
 * {@link #seek} restores exactly, so a resumed run sees the same batches it would have seen.
 */
public interface DataSource {
    TokenBatch next();

    long position();

    void seek(long position);
}
