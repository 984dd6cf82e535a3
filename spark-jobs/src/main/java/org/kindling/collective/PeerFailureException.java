package org.kindling.collective;

/**
 * A collective failed because of another worker: it closed the ring (it failed or was stopped) or
 * stopped answering. When a run fails, such errors are echoes; the driver reports the worker
 * whose failure was not one, if any.
 */
public class PeerFailureException extends RuntimeException {
    public PeerFailureException(String message, Throwable cause) {
        super(message, cause);
    }
}
