package org.kindling.train;

/**
 * The thread that ran training was interrupted (a notebook's interrupt, say): the run's Spark jobs
 * were cancelled and their tasks have stopped, so the session runs other jobs; the run resumes
 * from its last checkpoint. The interrupt is consumed: this exception reports it.
 */
public final class TrainingInterruptedException extends RuntimeException {
    public TrainingInterruptedException(String message, Throwable cause) {
        super(message, cause);
    }
}
