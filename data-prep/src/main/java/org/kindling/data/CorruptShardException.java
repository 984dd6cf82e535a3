package org.kindling.data;

import java.io.IOException;

/**
 * A shard that can never be read as it is: truncated, or not a Kindling Arrow shard. Unlike an I/O
 * error, reading it again gives the same result, so training fails at once instead of retrying.
 */
public final class CorruptShardException extends IOException {
    public CorruptShardException(String message, Throwable cause) {
        super(message, cause);
    }
}
