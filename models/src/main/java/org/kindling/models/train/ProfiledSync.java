package org.kindling.models.train;

import java.util.List;
import org.kindling.models.nn.Param;
import org.kindling.models.nn.Params;
import org.kindling.ops.Fence;
import org.kindling.ops.KernelClass;
import org.kindling.ops.Profiler;

/**
 * A {@link GradientSync} whose calls count as {@link KernelClass#COMMUNICATION} in a
 * {@link Profiler}: the time the trainer waits for the other workers and their sums. Bytes are
 * what this worker hands over (8 per double summed, 4 per gradient element). Results are the
 * wrapped sync's, unchanged.
 */
public record ProfiledSync(GradientSync sync, Profiler profiler) implements GradientSync {
    @Override
    public int rank() {
        return sync.rank();
    }

    @Override
    public int world() {
        return sync.world();
    }

    @Override
    public void allReduceSum(double[] values) {
        profiler.communication(8.0 * values.length, () -> sync.allReduceSum(values));
    }

    @Override
    public long[] allGather(long value) {
        return profiler.communication(8.0, () -> sync.allGather(value));
    }

    @Override
    public void gradientsReady(List<Param> params, Fence ready) {
        profiler.communication(0, () -> sync.gradientsReady(params, ready));
    }

    @Override
    public void finishGradients(Params params) {
        profiler.communication(4.0 * params.count(), () -> sync.finishGradients(params));
    }

    @Override
    public void prepare(Params params, boolean sharded) {
        sync.prepare(params, sharded);
    }

    @Override
    public void finishGradients(Params params, int[] bounds) {
        profiler.communication(4.0 * params.count(), () -> sync.finishGradients(params, bounds));
    }

    @Override
    public void allGather(float[] values, int[] bounds) {
        GradientSync.checkBounds(bounds, world(), values.length);
        // It hands over its own shard.
        double bytes = 4.0 * (bounds[rank() + 1] - bounds[rank()]);
        profiler.communication(bytes, () -> sync.allGather(values, bounds));
    }
}
