package org.kindling.models.train;

/**
 * A checkpoint resumed by a worker with another number of in-process replicas than the run that
 * wrote it: the count sets how each batch is split, the order of gradient sums and the dropout
 * masks, so the run would not continue as it began. The caller names the setting that chose the count.
 */
public final class ReplicaCountException extends IllegalStateException {
    private final String checkpoint;
    private final int written;
    private final int running;

    ReplicaCountException(String checkpoint, int written, int running) {
        super(checkpoint + " was written by workers of " + written + " replica(s) each; this worker has " + running
                + ": resume it with " + written + " replica(s) per worker, since the count sets the batch splits, the "
                + "order of gradient sums and the dropout masks");
        this.checkpoint = checkpoint;
        this.written = written;
        this.running = running;
    }

    /** The checkpoint, as its storage describes it. */
    public String checkpoint() {
        return checkpoint;
    }

    /** Replicas per worker of the run that wrote the checkpoint. */
    public int written() {
        return written;
    }

    /** Replicas of the worker that tried to resume it. */
    public int running() {
        return running;
    }
}
