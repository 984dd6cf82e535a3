package org.kindling.models.pipeline;

/** A pipeline stage could not go on: a message late, out of step or interrupted, or another stage failed. */
public final class PipelineException extends RuntimeException {
    public PipelineException(String message) {
        super(message);
    }

    public PipelineException(String message, Throwable cause) {
        super(message, cause);
    }
}
