package org.kindling.models.pipeline;

/**
 * One step of a pipeline stage's program: a computation on a micro-batch, or a message to or from a
 * neighbouring stage. Sends never block (the link buffers them); receives wait for the message.
 *
 * @param op what the stage does
 * @param microBatch the micro-batch it concerns, 0-based
 */
public record Command(Op op, int microBatch) {
    /** The vocabulary of stage programs. */
    public enum Op {
        /** Forward of the stage's layers, keeping every saved activation for the backward. */
        FORWARD,
        /** Forward that keeps only the stage's input: the backward needs a {@link #RECOMPUTE} first. */
        FORWARD_CHECKPOINT,
        /** Forward again from the kept input, restoring the saved activations a checkpointed forward released. */
        RECOMPUTE,
        /** Backward: consumes the micro-batch's saved activations and its output gradient. */
        BACKWARD,
        /** Sends the forward's output to the next stage. */
        SEND_ACT,
        /** Waits for the previous stage's output, this stage's input. */
        RECV_ACT,
        /** Sends the input gradient to the previous stage. */
        SEND_GRAD,
        /** Waits for the next stage's input gradient, this stage's output gradient. */
        RECV_GRAD;

        /** Whether the op computes (and so takes the stage's time); the rest are messages. */
        public boolean computes() {
            return this == FORWARD || this == FORWARD_CHECKPOINT || this == RECOMPUTE || this == BACKWARD;
        }
    }

    public Command {
        if (op == null) {
            throw new IllegalArgumentException("a command needs an op");
        }
        if (microBatch < 0) {
            throw new IllegalArgumentException("micro-batch must be >= 0, got " + microBatch);
        }
    }

    @Override
    public String toString() {
        return op + "(" + microBatch + ")";
    }
}
