package org.kindling.dist;

/** A worker stopped answering during a collective operation or the rendezvous. */
public final class CollectiveTimeoutException extends RuntimeException {
    public CollectiveTimeoutException(String message, Throwable cause) {
        super(message, cause);
    }
}
