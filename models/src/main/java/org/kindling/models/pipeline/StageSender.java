package org.kindling.models.pipeline;

import java.time.Duration;
import org.kindling.ops.Tensor;

/**
 * The sending end of one direction between two adjacent pipeline stages: a micro-batch's
 * activations forward or its gradient backward, handed over whole. Messages arrive in the order
 * they were sent, as a {@link StageChannel}'s do.
 */
@FunctionalInterface
public interface StageSender {
    /**
     * Hands {@code data} over (the link owns it from here, also when this throws), waiting at most
     * {@code timeout} for room.
     *
     * @throws PipelineException when there is no room within the timeout, or the wait is interrupted
     */
    void send(int microBatch, Tensor data, Duration timeout);
}
