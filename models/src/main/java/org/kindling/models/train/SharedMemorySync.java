package org.kindling.models.train;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.BrokenBarrierException;
import java.util.concurrent.Phaser;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.function.Consumer;
import org.kindling.models.nn.Param;
import org.kindling.models.nn.Params;
import org.kindling.ops.Fence;

/**
 * Gradient sync between replicas in one JVM, through shared memory: each replica copies its
 * gradients to the host, sums one slice of the flat buffer over all replicas (in rank order, so
 * every element's sum is formed once and every replica gets the same bits) and copies the whole
 * sum back. The replicas meet at a barrier; a replica that fails calls {@link #abort}, which
 * lets the others through the barrier to find the group broken, so they fail at once instead of waiting.
 * The gradients are copied only once the fence of every group handed over is done.
 */
public final class SharedMemorySync implements GradientSync {
    private final Group group;
    private final int rank;
    private final List<List<Param>> readyGroups = new ArrayList<>();
    private final List<Fence> readyFences = new ArrayList<>();

    /** The state the replicas of one group share. */
    private static final class Group {
        final int size;
        final Phaser barrier;
        final long timeoutSeconds;
        volatile boolean broken;
        final float[][] host;
        final Object[] slots;
        float[] sum = new float[0];

        Group(int size, long timeoutSeconds) {
            this.size = size;
            this.barrier = new Phaser(size);
            this.timeoutSeconds = timeoutSeconds;
            this.host = new float[size][];
            this.slots = new Object[size];
        }

        void await() {
            try {
                barrier.awaitAdvanceInterruptibly(barrier.arrive(), timeoutSeconds, TimeUnit.SECONDS);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new IllegalStateException("interrupted while waiting for the other replicas", e);
            } catch (TimeoutException e) {
                throw new IllegalStateException("the other replicas did not arrive within " + timeoutSeconds + " s", e);
            }
            if (broken) {
                throw new IllegalStateException("another replica failed", new BrokenBarrierException());
            }
        }
    }

    private SharedMemorySync(Group group, int rank) {
        this.group = group;
        this.rank = rank;
    }

    /** One sync per replica, by rank; a replica that does not arrive within {@code timeoutSeconds} fails the others. */
    public static List<SharedMemorySync> group(int replicas, long timeoutSeconds) {
        if (replicas < 1) {
            throw new IllegalArgumentException("need at least 1 replica, got " + replicas);
        }
        Group g = new Group(replicas, timeoutSeconds);
        List<SharedMemorySync> out = new ArrayList<>();
        for (int r = 0; r < replicas; r++) {
            out.add(new SharedMemorySync(g, r));
        }
        return out;
    }

    /**
     * Called by a replica that fails: it leaves the group, so the others pass the barrier (now or
     * when they reach it) and fail with "another replica failed". Call it once per failing replica.
     */
    public void abort() {
        group.broken = true;
        group.barrier.arriveAndDeregister();
    }

    @Override
    public int rank() {
        return rank;
    }

    @Override
    public int world() {
        return group.size;
    }

    @Override
    public void allReduceSum(double[] values) {
        allReduceSum(values, null);
    }

    /**
     * {@link #allReduceSum(double[])}, then {@code leader} (when not null) lets rank 0 replace the
     * group's sum in place (e.g. by its sum over other groups) before every replica takes it.
     */
    void allReduceSum(double[] values, Consumer<double[]> leader) {
        group.slots[rank] = values.clone();
        group.await();
        double[] out = new double[values.length];
        for (int r = 0; r < group.size; r++) {
            double[] v = (double[]) group.slots[r];
            for (int i = 0; i < out.length; i++) {
                out[i] += v[i];
            }
        }
        group.await(); // nobody overwrites a slot before everyone has read it
        if (leader != null) {
            if (rank == 0) {
                leader.accept(out);
                group.slots[0] = out;
            }
            group.await();
            out = (double[]) group.slots[0];
            group.await(); // rank 0's next call must not replace its slot before everyone has read it
        }
        System.arraycopy(out, 0, values, 0, values.length);
    }

    /** Rank 0's {@code value} of {@link #share}, as every replica of the group sees it. */
    <T> T share(T value) {
        if (rank == 0) {
            group.slots[0] = value;
        }
        group.await();
        @SuppressWarnings("unchecked")
        T out = (T) group.slots[0];
        group.await();
        return out;
    }

    @Override
    public long[] allGather(long value) {
        group.slots[rank] = value;
        group.await();
        long[] out = new long[group.size];
        for (int r = 0; r < group.size; r++) {
            out[r] = (Long) group.slots[r];
        }
        group.await();
        return out;
    }

    @Override
    public void gradientsReady(List<Param> params, Fence ready) {
        // Shared memory needs no early start: the sum runs in parallel slices once all are done.
        readyGroups.add(params);
        readyFences.add(ready);
    }

    @Override
    public void finishGradients(Params params) {
        finishGradients(params, null, null);
    }

    /**
     * Sums exactly as {@link #finishGradients(Params)} does (the sum of an element does not depend
     * on who forms it), but copies only this replica's shard back to its device.
     */
    @Override
    public void finishGradients(Params params, int[] bounds) {
        GradientSync.checkBounds(bounds, group.size, params.count());
        finishGradients(params, bounds, null);
    }

    /**
     * {@link #finishGradients(Params)}, with {@code leader} (when not null) letting rank 0 replace
     * the group's flat sum in place before every replica copies it (or, with {@code bounds}, its
     * shard of it) into its gradients.
     */
    void finishGradients(Params params, int[] bounds, Consumer<float[]> leader) {
        try {
            Duration timeout = Duration.ofSeconds(group.timeoutSeconds);
            for (int i = 0; i < readyGroups.size(); i++) {
                GradientSync.awaitGradients(readyGroups.get(i), readyFences.get(i), timeout);
            }
        } finally {
            readyGroups.clear();
            readyFences.clear();
        }
        int n = params.count();
        if (group.host[rank] == null || group.host[rank].length != n) {
            group.host[rank] = new float[n];
        }
        params.grads().device().backend().copyToHost(group.host[rank], params.grads());
        if (rank == 0 && group.sum.length != n) {
            group.sum = new float[n];
        }
        group.await();
        float[] sum = group.sum;
        int from = (int) ((long) n * rank / group.size);
        int to = (int) ((long) n * (rank + 1) / group.size);
        float[] first = group.host[0];
        System.arraycopy(first, from, sum, from, to - from);
        for (int r = 1; r < group.size; r++) {
            float[] h = group.host[r];
            for (int i = from; i < to; i++) {
                sum[i] += h[i];
            }
        }
        group.await();
        if (leader != null) {
            if (rank == 0) {
                leader.accept(sum);
            }
            group.await();
        }
        if (bounds == null) {
            params.grads().copyFrom(sum);
        } else {
            int lo = bounds[rank];
            int hi = bounds[rank + 1];
            if (hi > lo) {
                params.grads().view(lo, hi - lo).copyFrom(java.util.Arrays.copyOfRange(sum, lo, hi));
            }
        }
    }

    @Override
    public void allGather(float[] values, int[] bounds) {
        GradientSync.checkBounds(bounds, group.size, values.length);
        allGather(values, bounds[rank], bounds[rank + 1], null);
    }

    /**
     * Every replica's {@code values[from, to)} (its own range) into every replica's {@code values};
     * then {@code leader} (when not null) lets rank 0 fill in the rest in place (the ranges of other
     * groups), and every replica takes rank 0's array.
     */
    void allGather(float[] values, int from, int to, Consumer<float[]> leader) {
        group.slots[rank] = new Object[] {values, from, to};
        group.await();
        for (int r = 0; r < group.size; r++) {
            if (r != rank) {
                Object[] other = (Object[]) group.slots[r];
                int lo = (Integer) other[1];
                int hi = (Integer) other[2];
                // Another replica writes only outside its own range, so this range is stable while it is read.
                System.arraycopy((float[]) other[0], lo, values, lo, hi - lo);
            }
        }
        group.await(); // nobody replaces a slot before everyone has read it
        if (leader != null) {
            if (rank == 0) {
                leader.accept(values);
                group.slots[0] = values;
            }
            group.await();
            if (rank != 0) {
                float[] all = (float[]) group.slots[0];
                System.arraycopy(all, 0, values, 0, values.length);
            }
            group.await(); // rank 0's next call must not replace its slot before everyone has read it
        }
    }
}
