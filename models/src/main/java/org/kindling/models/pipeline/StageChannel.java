package org.kindling.models.pipeline;

import java.time.Duration;
import org.kindling.ops.Tensor;

/**
 * One direction between two adjacent pipeline stages: activations forward or gradients backward,
 * each tagged with its micro-batch and handed over whole (the receiver owns the tensor). Messages
 * arrive in the order they were sent; every wait has a deadline. In one process it is an {@link
 * InMemoryChannel}; across executors a stage link can carry the same messages.
 */
public interface StageChannel extends AutoCloseable {
    /**
     * Hands {@code data} over (the channel owns it from here, also when this throws), waiting at
     * most {@code timeout} for room.
     *
     * @throws PipelineException when there is no room within the timeout, or the wait is interrupted
     */
    void send(int microBatch, Tensor data, Duration timeout);

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
