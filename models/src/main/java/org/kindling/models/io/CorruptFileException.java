package org.kindling.models.io;

import java.io.IOException;

/**
 * A file that can never be read as it is: truncated, or not in the format it should be in. Unlike
 * an I/O error, reading it again gives the same result, so callers fail at once instead of retrying.
 */
public final class CorruptFileException extends IOException {
    public CorruptFileException(String message) {
        super(message);
    }

    public CorruptFileException(String message, Throwable cause) {
        super(message, cause);
    }
}
