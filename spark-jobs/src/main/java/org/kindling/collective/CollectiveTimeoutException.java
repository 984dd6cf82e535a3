package org.kindling.collective;

/** A worker stopped answering during a collective operation. */
public final class CollectiveTimeoutException extends PeerFailureException {
    public CollectiveTimeoutException(String message, Throwable cause) {
        super(message, cause);
    }
}
