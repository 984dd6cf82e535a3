package org.kindling.models.mixers;

/**
 * What a token mixer remembers of a batch of sequences while decoding: attention's KV cache
 * (growing with the context), a recurrent mixer's state (constant in the context length).
 */
public interface MixerState extends AutoCloseable {
    /** Bytes the state holds now, for reports. */
    long bytes();

    @Override
    void close();
}
