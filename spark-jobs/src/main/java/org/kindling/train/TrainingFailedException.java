package org.kindling.train;

/** A training run failed; the message names the worker that failed first and why, the cause is Spark's report. */
public final class TrainingFailedException extends RuntimeException {
    public TrainingFailedException(String message, Throwable cause) {
        super(message, cause);
    }
}
