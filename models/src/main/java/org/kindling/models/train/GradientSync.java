package org.kindling.models.train;

import java.util.List;
import org.kindling.models.nn.Param;
import org.kindling.models.nn.Params;

/**
 * How the workers of a data-parallel run combine what each computed. The {@link Trainer} calls it
 * in a fixed order every step, so every worker makes the same calls. Implementations must give
 * every worker bit-identical results, so that the replicas never drift apart.
 *
 * <p>Gradient exchange is split so that it can overlap the backward pass: {@link #gradientsReady}
 * hands over parameters as soon as the backward pass has finished with them (last layer first),
 * and {@link #finishGradients} waits until every gradient holds the sum over all workers.
 */
public interface GradientSync {
    /** This worker's index in [0, world). */
    int rank();

    /** Number of workers. */
    int world();

    /** Replaces each value by its sum over all workers. */
    void allReduceSum(double[] values);

    /** Every worker's {@code value}, indexed by rank. */
    long[] allGather(long value);

    /** The backward pass of the step's last micro-batch is done with these parameters' gradients. */
    void gradientsReady(List<Param> params);

    /** Blocks until every parameter gradient of the model is summed over all workers. */
    void finishGradients(Params params);

    /** A run of one worker: nothing to combine. */
    GradientSync SINGLE = new GradientSync() {
        @Override
        public int rank() {
            return 0;
        }

        @Override
        public int world() {
            return 1;
        }

        @Override
        public void allReduceSum(double[] values) {
        }

        @Override
        public long[] allGather(long value) {
            return new long[] {value};
        }

        @Override
        public void gradientsReady(List<Param> params) {
        }

        @Override
        public void finishGradients(Params params) {
        }
    };
}
