package org.kindling.models.train;

import java.time.Duration;
import java.util.List;
import org.kindling.models.nn.Param;
import org.kindling.models.nn.Params;
import org.kindling.ops.Fence;

/**
 * How the workers of a data-parallel run combine what each computed. The {@link Trainer} calls it
 * in a fixed order every step, so every worker makes the same calls. Implementations must give
 * every worker bit-identical results, so that the replicas never drift apart.
 *
 * <p>Gradient exchange is split so that it can overlap the backward pass: {@link #gradientsReady}
 * hands over parameters as soon as the backward pass has finished with them (last layer first),
 * and {@link #finishGradients} waits until every gradient holds the sum over all workers. On an
 * asynchronous device the kernels that wrote a group's gradients may still be running when it is
 * handed over: implementations read them only after the group's fence is done ({@link #awaitGradients}).
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

    /**
     * The backward pass of the step's last micro-batch is done with these parameters' gradients:
     * they are final once {@code ready} is done.
     */
    void gradientsReady(List<Param> params, Fence ready);

    /**
     * Called by the trainer before its first step: the model whose gradients this sync combines, and
     * whether the trainer then asks for its shard only ({@code zero: 1}, {@link #finishGradients(Params, int[])}).
     * A sync that sums in chunks lays them out by the workers' shards ({@link ZeroShards}) in both
     * modes, so both sum every element in the same order and give the same bits.
     */
    default void prepare(Params params, boolean sharded) {
    }

    /** Blocks until every parameter gradient of the model is summed over all workers. */
    void finishGradients(Params params);

    /**
     * ZeRO-1's reduce-scatter: blocks until this worker's shard of the flat gradients, elements
     * [{@code bounds[rank]}, {@code bounds[rank+1]}), holds the sum over all workers; the rest may
     * hold anything. Summing them all ({@link #finishGradients(Params)}) fulfils it, and is what a
     * sync that cannot scatter does; one that can must give the shard the bits an all-reduce would.
     */
    default void finishGradients(Params params, int[] bounds) {
        finishGradients(params);
    }

    /**
     * ZeRO-1's all-gather: every worker's {@code values[bounds[r], bounds[r+1])} (for its rank
     * {@code r}) replaces that range on every worker, so all end with the same array.
     */
    void allGather(float[] values, int[] bounds);

    /** Checks that {@code bounds} are {@code world + 1} non-decreasing offsets from 0 to {@code values}' length. */
    static void checkBounds(int[] bounds, int world, int length) {
        boolean ok = bounds.length == world + 1 && bounds[0] == 0 && bounds[world] == length;
        for (int r = 0; ok && r < world; r++) {
            ok = bounds[r] <= bounds[r + 1];
        }
        if (!ok) {
            throw new IllegalArgumentException("shard bounds " + java.util.Arrays.toString(bounds) + " do not split " + length
                    + " elements into " + world + " ordered ranges");
        }
    }

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
        public void gradientsReady(List<Param> params, Fence ready) {
        }

        @Override
        public void finishGradients(Params params) {
        }

        @Override
        public void allGather(float[] values, int[] bounds) {
            GradientSync.checkBounds(bounds, 1, values.length);
        }
    };
    /**
     * Waits for a group's fence before its gradients are read, failing after {@code timeout} with
     * an error that names the group, so a device that never finishes is found rather than waited on.
     */
    static void awaitGradients(List<Param> group, Fence ready, Duration timeout) {
        if (ready.isDone()) {
            return;
        }
        StringBuilder names = new StringBuilder();
        for (int i = 0; i < group.size() && i < 3; i++) {
            names.append(i == 0 ? "" : ", ").append(group.get(i).name());
        }
        if (group.size() > 3) {
            names.append(", … (").append(group.size()).append(" parameters)");
        }
        ready.awaitOrFail(timeout, "gradients of [" + names + "]");
    }
}
