package org.kindling.models.train;

import java.util.ArrayList;
import java.util.List;
import org.kindling.models.nn.Param;
import org.kindling.models.nn.Params;
import org.kindling.ops.Fence;

/**
 * Gradient sync of replicas in groups: the replicas of one process sum in shared memory
 * ({@link SharedMemorySync}), only the group's leader (local rank 0) exchanges that sum with the
 * other groups' leaders through {@code between} (a ring between Spark tasks), and every replica
 * then takes the leader's result, so all replicas of all groups hold the same bits. Every group
 * has the same number of replicas; replica {@code l} of group {@code g} is worker
 * {@code g * local + l} of {@code groups * local}. The leader's exchange starts once the whole
 * local sum is formed, so it does not overlap the backward pass.
 */
public final class HierarchicalSync implements GradientSync {
    private final SharedMemorySync local;
    private final GradientSync between;

    private HierarchicalSync(SharedMemorySync local, GradientSync between) {
        this.local = local;
        this.between = between;
    }

    /**
     * One sync per local replica, by local rank: {@code local}'s syncs composed with
     * {@code between}, which only local rank 0 calls. With one local replica that is
     * {@code between} itself, and with one group the local syncs themselves.
     */
    public static List<GradientSync> compose(List<SharedMemorySync> local, GradientSync between) {
        List<GradientSync> out = new ArrayList<>();
        for (SharedMemorySync s : local) {
            out.add(local.size() == 1 ? between : between.world() == 1 ? s : new HierarchicalSync(s, between));
        }
        return out;
    }

    @Override
    public int rank() {
        return between.rank() * local.world() + local.rank();
    }

    @Override
    public int world() {
        return between.world() * local.world();
    }

    @Override
    public void allReduceSum(double[] values) {
        local.allReduceSum(values, between::allReduceSum);
    }

    @Override
    public long[] allGather(long value) {
        long[] mine = local.allGather(value);
        long[] all = null;
        if (local.rank() == 0) {
            int size = mine.length;
            all = new long[size * between.world()];
            // One exchange per local replica: the ring gathers one value per group.
            for (int l = 0; l < size; l++) {
                long[] column = between.allGather(mine[l]);
                for (int g = 0; g < column.length; g++) {
                    all[g * size + l] = column[g];
                }
            }
        }
        return local.share(all).clone();
    }

    @Override
    public void gradientsReady(List<Param> params, Fence ready) {
        local.gradientsReady(params, ready);
    }

    /** The leader sums the group's whole gradients through {@code between}, in either mode. */
    @Override
    public void prepare(Params params, boolean sharded) {
        if (local.rank() == 0) {
            between.prepare(params, false);
        }
    }

    @Override
    public void finishGradients(Params params) {
        local.finishGradients(params, null, sum -> {
            // The leader's gradients carry the local sum through the ring and back.
            params.grads().copyFrom(sum);
            between.gradientsReady(params.list(), params.grads().device().fence());
            between.finishGradients(params);
            params.grads().device().backend().copyToHost(sum, params.grads());
        });
    }

    /**
     * Replicas gather their group's shards in shared memory (the group's workers are consecutive,
     * so its shards form one range), and the leader exchanges the groups' ranges through {@code between}.
     */
    @Override
    public void allGather(float[] values, int[] bounds) {
        GradientSync.checkBounds(bounds, world(), values.length);
        int size = local.world();
        int[] groups = new int[between.world() + 1];
        for (int g = 0; g <= between.world(); g++) {
            groups[g] = bounds[g * size];
        }
        local.allGather(values, bounds[rank()], bounds[rank() + 1], all -> between.allGather(all, groups));
    }
}
