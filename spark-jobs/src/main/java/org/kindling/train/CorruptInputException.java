package org.kindling.train;

import org.kindling.data.CorruptShardException;
import org.kindling.models.io.CorruptFileException;

/**
 * A worker read a file that can never be read as it is: a truncated or corrupt shard or
 * checkpoint. Every stage attempt would fail alike, so {@link CorruptInputs} stops the job at its
 * first failure instead of letting Spark retry the stage.
 */
public final class CorruptInputException extends RuntimeException {
    private CorruptInputException(String message, Throwable cause) {
        super(message, cause);
    }

    /** {@code t} as a CorruptInputException naming the file and the rank, if a corrupt file caused it; else null. */
    static CorruptInputException of(int rank, Throwable t) {
        for (Throwable c = t; c != null; c = c.getCause() == c ? null : c.getCause()) {
            if (c instanceof CorruptShardException || c instanceof CorruptFileException) {
                return new CorruptInputException("rank " + rank + ": " + c.getMessage(), t);
            }
        }
        return null;
    }
}
