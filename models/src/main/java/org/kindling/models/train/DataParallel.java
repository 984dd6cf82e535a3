package org.kindling.models.train;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.function.BiFunction;
import java.util.function.IntFunction;
import org.kindling.models.Gpt;
import org.kindling.models.data.DataSource;
import org.kindling.ops.Device;
import org.kindling.ops.Profiler;

/**
 * Data-parallel training inside one JVM: R replicas of a model, each on its own device (on the
 * CPU: its own share of the cores), step in lock-step on their own slices of the batch and sum
 * gradients through {@link SharedMemorySync}. Every replica takes the same AdamW step, so they
 * stay bit-identical; the step equals one replica training on the whole batch up to the order of
 * fp32 sums. On a CPU this beats splitting each kernel across the cores: every GEMM runs whole on
 * one core, and the many small kernels of a step need no hand-off between threads.
 */
public final class DataParallel implements AutoCloseable {
    /** One replica and what it owns. */
    public record Replica(Device device, Gpt model, Trainer trainer) implements AutoCloseable {
        @Override
        public void close() {
            trainer.close();
            model.close();
            device.close();
        }
    }

    private final List<Replica> replicas = new ArrayList<>();
    private final List<SharedMemorySync> syncs;
    private final ExecutorService threads;
    private boolean broken;

    /**
     * @param make builds replica {@code rank} around its sync (its trainer must use that sync)
     */
    public DataParallel(int count, BiFunction<Integer, GradientSync, Replica> make) {
        this(count, null, make);
    }

    /**
     * @param profiler when not null, the syncs handed to {@code make} count their time there as
     *     communication ({@link ProfiledSync})
     * @param make builds replica {@code rank} around its sync (its trainer must use that sync)
     */
    public DataParallel(int count, Profiler profiler, BiFunction<Integer, GradientSync, Replica> make) {
        this(count, GradientSync.SINGLE, 600, profiler, make);
    }

    /**
     * Replicas that are one group of a larger run: they sum in shared memory and their rank 0
     * exchanges the sum with the other groups through {@code between} ({@link HierarchicalSync}).
     *
     * @param timeoutSeconds how long a replica waits for the others at a shared-memory barrier
     */
    public DataParallel(int count, GradientSync between, long timeoutSeconds, Profiler profiler,
                        BiFunction<Integer, GradientSync, Replica> make) {
        this.syncs = SharedMemorySync.group(count, timeoutSeconds);
        List<GradientSync> composed = HierarchicalSync.compose(syncs, between);
        try {
            for (int r = 0; r < count; r++) {
                GradientSync sync = profiler == null ? composed.get(r) : new ProfiledSync(composed.get(r), profiler);
                Replica replica = make.apply(r, sync);
                replicas.add(replica);
                if (replica.trainer().sync() != sync) {
                    throw new IllegalArgumentException("replica " + r + "'s trainer does not use the sync it was given");
                }
            }
        } catch (RuntimeException e) {
            replicas.forEach(Replica::close);
            throw e;
        }
        this.threads = count > 1 ? Executors.newFixedThreadPool(count - 1, r -> {
            Thread t = new Thread(r, "kindling-replica");
            t.setDaemon(true);
            return t;
        }) : null;
    }

    public List<Replica> replicas() {
        return List.copyOf(replicas);
    }

    /** One optimizer step: replica r trains on {@code data.get(r)}. Returns replica 0's result (the loss is over all replicas). */
    public StepResult step(List<DataSource> data) {
        if (broken) {
            throw new IllegalStateException("a replica failed in an earlier step; the replicas may differ now");
        }
        if (data.size() != replicas.size()) {
            throw new IllegalArgumentException(data.size() + " data sources for " + replicas.size() + " replicas");
        }
        try {
            return onEach(rank -> stepOf(rank, data.get(rank))).get(0);
        } catch (RuntimeException e) {
            broken = true;
            throw e;
        }
    }

    /**
     * Runs {@code work} for every replica rank at once, each on the replica's own thread (rank 0 on
     * the caller's), and returns the results by rank; for work between steps too, such as an
     * evaluation shared out among the replicas.
     *
     * @throws RuntimeException the first replica's failure, not the ones that then found a barrier broken
     */
    public <T> List<T> onEach(IntFunction<T> work) {
        List<Future<T>> others = new ArrayList<>();
        for (int r = 1; r < replicas.size(); r++) {
            int rank = r;
            others.add(threads.submit(() -> work.apply(rank)));
        }
        List<RuntimeException> failures = new ArrayList<>();
        List<T> out = new ArrayList<>();
        try {
            out.add(work.apply(0));
        } catch (RuntimeException e) {
            failures.add(e);
        }
        for (Future<T> f : others) {
            try {
                out.add(f.get());
            } catch (ExecutionException e) {
                failures.add(e.getCause() instanceof RuntimeException re ? re : new IllegalStateException(e.getCause()));
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                failures.add(new IllegalStateException("interrupted", e));
            }
        }
        if (!failures.isEmpty()) {
            throw failures.stream().filter(e -> !(e.getCause() instanceof java.util.concurrent.BrokenBarrierException))
                    .findFirst().orElse(failures.get(0));
        }
        return out;
    }

    private StepResult stepOf(int rank, DataSource data) {
        try {
            return replicas.get(rank).trainer().step(data);
        } catch (RuntimeException | Error e) {
            syncs.get(rank).abort(); // the others must not wait for this replica
            throw e;
        }
    }

    @Override
    public void close() {
        if (threads != null) {
            threads.shutdownNow();
            // A replica still in a step (its caller was interrupted) must not find its model freed under it.
            // The wait goes on through an interrupt (a cancelled Spark task closes its group interrupted) and keeps it.
            long deadline = System.nanoTime() + java.util.concurrent.TimeUnit.SECONDS.toNanos(CLOSE_TIMEOUT_S);
            boolean stopped = false;
            boolean interrupted = false;
            while (!stopped && System.nanoTime() - deadline < 0) {
                try {
                    stopped = threads.awaitTermination(deadline - System.nanoTime(), java.util.concurrent.TimeUnit.NANOSECONDS);
                } catch (InterruptedException e) {
                    interrupted = true;
                }
            }
            if (interrupted) {
                Thread.currentThread().interrupt();
            }
            if (!stopped) {
                throw new IllegalStateException("replica threads did not stop within " + CLOSE_TIMEOUT_S + " s of being "
                        + "interrupted; their models are left open rather than freed under them");
            }
        }
        replicas.forEach(Replica::close);
    }

    /** How long closing waits for interrupted replica threads to leave their step. */
    private static final long CLOSE_TIMEOUT_S = 60;
}
