package org.kindling.collective;

import java.nio.ByteBuffer;
import java.nio.FloatBuffer;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.kindling.models.nn.Param;
import org.kindling.models.nn.Params;
import org.kindling.models.train.GradientSync;
import org.kindling.models.train.ZeroShards;
import org.kindling.ops.Fence;

/**
 * Data-parallel gradient sync over a {@link Ring}. Gradients are summed in buckets: the backward
 * pass hands over parameters as it finishes them (last layer first); once their size reaches the
 * bucket size they are all-reduced on a communication thread while the backward pass goes on.
 * That thread reads a bucket's gradients only once the fences of its groups are done (waiting at
 * most the ring's timeout), so it never reads a buffer a device kernel is still writing.
 * Bucket boundaries depend only on the model, so every rank forms the same buckets. All ring
 * traffic runs on that one thread, in the order the trainer asks for it.
 *
 * <p>Once {@link #prepare}d with the model, a bucket is laid out by the ranks' ZeRO-1 shards
 * ({@link ZeroShards}): rank r's chunk of it is the bucket's parameters in shard r. Under
 * {@code zero: 1} a bucket is only reduce-scattered (each rank keeps its chunk's sum), otherwise
 * all-reduced over the same chunks, so both modes sum every element in the same order.
 */
public final class RingSync implements GradientSync, AutoCloseable {
    /** PyTorch DDP's default bucket is 25 MiB; smaller buckets start sending earlier in a short backward. */
    public static final long DEFAULT_BUCKET_BYTES = 4L << 20;

    private final Ring ring;
    private final long bucketBytes;
    private final ExecutorService comm;
    private final List<Param> pending = new ArrayList<>();
    /** The groups with a parameter in {@link #pending}, with the fences their gradients wait on. */
    private final List<Ready> pendingGroups = new ArrayList<>();
    private final List<Future<?>> inFlight = new ArrayList<>();
    private long pendingElements;
    /** The bucket being summed, in the ring's wire form; only the communication thread touches it. */
    private ByteBuffer flat = Ring.allocateFloats(0);
    private int reported;
    /** The ranks' shards of the flat buffer once prepared ({@link ZeroShards}); null before. */
    private int[] shards;
    /** Where the model's flat gradient buffer starts in its storage, for a parameter's offset in it. */
    private int gradBase;
    /** Whether each rank keeps only its chunks' sums (zero 1). */
    private boolean scatter;
    private long commNanos;
    private long waitNanos;

    private record Ready(List<Param> params, Fence fence) {
    }

    public RingSync(Ring ring, long bucketBytes) {
        if (bucketBytes < 1) {
            throw new IllegalArgumentException("bucket size must be at least 1 byte, got " + bucketBytes);
        }
        this.ring = ring;
        this.bucketBytes = bucketBytes;
        this.comm = Executors.newSingleThreadExecutor(r -> {
            Thread t = new Thread(r, "kindling-gradient-sync-" + ring.rank());
            t.setDaemon(true);
            return t;
        });
    }

    @Override
    public int rank() {
        return ring.rank();
    }

    @Override
    public int world() {
        return ring.world();
    }

    /** Wall time the communication thread has spent in bucket all-reduces, in seconds. */
    public double commSeconds() {
        return commNanos / 1e9;
    }

    /**
     * Wall time the trainer has spent blocked on gradient sync, in seconds: the all-reduce time
     * that did not overlap the backward pass, plus the small loss/count all-reduces.
     */
    public double waitSeconds() {
        return waitNanos / 1e9;
    }

    @Override
    public void allReduceSum(double[] values) {
        ByteBuffer mine = ByteBuffer.allocate(values.length * Double.BYTES);
        for (double v : values) {
            mine.putDouble(v);
        }
        byte[][] all = onComm(() -> ring.allGather(mine.array()));
        // Summed in rank order on every rank, so every rank gets the same bits.
        for (int i = 0; i < values.length; i++) {
            double sum = 0;
            for (byte[] b : all) {
                sum += ByteBuffer.wrap(b).getDouble(i * Double.BYTES);
            }
            values[i] = sum;
        }
    }

    @Override
    public long[] allGather(long value) {
        byte[][] all = onComm(() -> ring.allGather(ByteBuffer.allocate(Long.BYTES).putLong(value).array()));
        long[] out = new long[all.length];
        for (int r = 0; r < all.length; r++) {
            out[r] = ByteBuffer.wrap(all[r]).getLong();
        }
        return out;
    }

    @Override
    public void prepare(Params params, boolean sharded) {
        shards = ZeroShards.bounds(params, ring.world());
        gradBase = params.grads().offset();
        scatter = sharded;
    }

    /** The rank whose shard holds {@code p} (a parameter of the prepared model). */
    private int owner(Param p) {
        int o = p.grad().offset() - gradBase;
        int r = 0;
        while (r + 1 < ring.world() && shards[r + 1] <= o) {
            r++;
        }
        return r;
    }

    @Override
    public void gradientsReady(List<Param> params, Fence ready) {
        Ready group = new Ready(List.copyOf(params), ready);
        pendingGroups.add(group);
        for (int i = 0; i < params.size(); i++) {
            Param p = params.get(i);
            pending.add(p);
            pendingElements += p.numel();
            reported++;
            if (pendingElements * Float.BYTES >= bucketBytes) {
                flush();
                if (i + 1 < params.size()) {
                    pendingGroups.add(group); // the group's rest goes into the next bucket
                }
            }
        }
    }

    private void flush() {
        if (pending.isEmpty()) {
            return;
        }
        List<Param> bucket = new ArrayList<>(pending);
        int world = ring.world();
        int[] chunks = null;
        if (shards != null) {
            // Rank r's chunk: the bucket's parameters in its shard, in hand-over order (a stable sort).
            bucket.sort(java.util.Comparator.comparingInt(this::owner));
            chunks = new int[world + 1];
            for (Param p : bucket) {
                chunks[owner(p) + 1] += p.numel();
            }
            for (int r = 0; r < world; r++) {
                chunks[r + 1] += chunks[r];
            }
        }
        int[] bounds = chunks;
        List<Ready> groups = List.copyOf(pendingGroups);
        int size = (int) pendingElements;
        pending.clear();
        pendingGroups.clear();
        pendingElements = 0;
        inFlight.add(comm.submit(() -> {
            long t0 = System.nanoTime();
            for (Ready g : groups) {
                GradientSync.awaitGradients(g.params(), g.fence(), ring.timeout());
            }
            if (flat.capacity() < (long) size * Float.BYTES) {
                flat = Ring.allocateFloats(size);
            }
            FloatBuffer values = flat.clear().asFloatBuffer();
            for (Param p : bucket) {
                values.put(p.grad().toFloatArray());
            }
            if (bounds == null) {
                ring.allReduce(flat, 0, size);
            } else if (scatter) {
                ring.reduceScatter(flat, bounds);
            } else {
                ring.allReduce(flat, bounds);
            }
            values.clear();
            for (Param p : bucket) {
                float[] g = new float[p.numel()];
                values.get(g);
                // Scattered: only this rank's chunk holds sums.
                if (!scatter || owner(p) == ring.rank()) {
                    p.grad().copyFrom(g);
                }
            }
            commNanos += System.nanoTime() - t0;
            return null;
        }));
    }

    /** The whole sums: refused once prepared for zero 1, whose buckets are only reduce-scattered. */
    @Override
    public void finishGradients(Params params) {
        if (scatter) {
            throw new IllegalStateException("this sync was prepared for zero 1: it reduce-scatters gradients, so ask for a shard "
                    + "(finishGradients(params, bounds))");
        }
        finish(params);
    }

    /** This rank's shard of the sums, under zero 1 through reduce-scatters over the shards it was prepared with. */
    @Override
    public void finishGradients(Params params, int[] bounds) {
        if (scatter && !java.util.Arrays.equals(bounds, shards)) {
            throw new IllegalArgumentException("asked for shard bounds " + java.util.Arrays.toString(bounds) + " but prepared with "
                    + java.util.Arrays.toString(shards));
        }
        finish(params);
    }

    private void finish(Params params) {
        long t0 = System.nanoTime();
        flush();
        int expected = params.list().size();
        int got = reported;
        reported = 0;
        try {
            for (Future<?> f : inFlight) {
                await(f);
            }
        } finally {
            inFlight.clear();
            waitNanos += System.nanoTime() - t0;
        }
        if (got != expected) {
            throw new IllegalStateException("the backward pass handed over " + got + " parameters for gradient sync, the model has "
                    + expected);
        }
    }

    /** Through the ring's all-gather, on the communication thread like all ring traffic. */
    @Override
    public void allGather(float[] values, int[] bounds) {
        GradientSync.checkBounds(bounds, world(), values.length);
        onComm(() -> {
            if (flat.capacity() < (long) values.length * Float.BYTES) {
                flat = Ring.allocateFloats(values.length);
            }
            FloatBuffer wire = flat.clear().asFloatBuffer();
            wire.put(values);
            ring.allGather(flat, bounds);
            wire.get(0, values);
            return null;
        });
    }

    private <T> T onComm(java.util.concurrent.Callable<T> work) {
        long t0 = System.nanoTime();
        try {
            return await(comm.submit(work));
        } finally {
            waitNanos += System.nanoTime() - t0;
        }
    }

    private static <T> T await(Future<T> f) {
        try {
            return f.get();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException("interrupted while waiting for gradient sync", e);
        } catch (ExecutionException e) {
            if (e.getCause() instanceof RuntimeException re) {
                throw re;
            }
            throw new IllegalStateException(e.getCause());
        }
    }

    @Override
    public void close() {
        comm.shutdownNow();
        ring.close();
    }
}
