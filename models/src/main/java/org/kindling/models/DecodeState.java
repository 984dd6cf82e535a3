package org.kindling.models;

/** What a token mixer remembers of a sequence during incremental decoding (a KV cache, a recurrent state). */
public interface DecodeState extends AutoCloseable {
    /** Tokens seen so far. */
    int length();

    @Override
    void close();
}
