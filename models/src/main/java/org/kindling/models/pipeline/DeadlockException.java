package org.kindling.models.pipeline;

/** A pipeline state in which no stage can progress: each unfinished stage waits for a message no one will send. */
public final class DeadlockException extends IllegalStateException {
    DeadlockException(String message) {
        super(message);
    }
}
