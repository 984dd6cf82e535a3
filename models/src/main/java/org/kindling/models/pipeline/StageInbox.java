package org.kindling.models.pipeline;

import java.time.Duration;
import org.kindling.ops.Tensor;

/**
 * The receiving end of a message-driven pipeline stage: its input activations from the previous
 * stage and its output gradients from the next arrive in one queue, so the stage can take whichever
 * arrived first. Arrivals are totally ordered (each link's messages in the order they were sent); a
 * network link delivers into an inbox as an {@link InMemoryInbox}'s senders do.
 */
public interface StageInbox extends AutoCloseable {
    /** Which neighbour a message comes from. */
    enum Kind {
        /** The previous stage's output: this stage's input of a forward. */
        ACTIVATION,
        /** The next stage's input gradient: this stage's output gradient of a backward. */
        GRADIENT
    }

    /** One arrived message; whoever takes it from the inbox owns its tensor. */
    record Message(Kind kind, int microBatch, Tensor data) {
    }

    /**
     * The earliest-arrived message not yet taken, waiting at most {@code timeout} for one (zero: only
     * what is there); null when none arrives in time.
     *
     * @throws PipelineException when the wait is interrupted
     */
    Message poll(Duration timeout);

    /** Frees the messages arrived and not taken. */
    @Override
    void close();
}
