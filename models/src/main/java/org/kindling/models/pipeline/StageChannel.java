package org.kindling.models.pipeline;

import java.time.Duration;
import org.kindling.ops.Tensor;

/**
 * One direction between two adjacent pipeline stages: activations forward or gradients backward,
 * each tagged with its micro-batch and handed over whole (the receiver owns the tensor). Messages
 * arrive in the order they were sent; every wait has a deadline. In one process it is an {@link
 * InMemoryChannel}; across executors a stage link can carry the same messages. A message-driven
 * stage receives from both neighbours through one {@link StageInbox} instead.
 */
public interface StageChannel extends StageSender, AutoCloseable {
    /**
     * The next message, which must be micro-batch {@code microBatch}'s; the caller owns the tensor.
     *
     * @throws PipelineException when none arrives within the timeout, another micro-batch's does, or the wait is interrupted
     */
    Tensor receive(int microBatch, Duration timeout);

    /** Frees the messages sent and not received. */
    @Override
    void close();
}
