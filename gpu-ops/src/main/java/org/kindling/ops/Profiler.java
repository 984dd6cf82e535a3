package org.kindling.ops;

import java.util.EnumMap;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.DoubleAdder;
import java.util.concurrent.atomic.LongAdder;
import java.util.function.Supplier;

/**
 * Counts, per {@link KernelClass}, the calls, FLOPs, bytes moved and wall time of the kernels run
 * on devices it {@link #wrap}s, and the time spent in {@link #communication} — the measurements
 * behind a "where do the bytes and seconds go" table (Ivanov et al., "Data movement is all you
 * need"). One profiler may serve several devices on several threads (data-parallel replicas): its
 * counters are summed over all of them.
 *
 * <p>Only outermost calls count: a kernel that another profiled kernel, or a communication scope,
 * calls on the same thread (a sync copying gradients to the host, a backend default method) is
 * part of its caller's time and is not counted again.
 */
public final class Profiler {
    /** What one class has accumulated. */
    public record Totals(long calls, double flops, double bytes, long nanos) {
    }

    private final Map<KernelClass, Counter> counters = new EnumMap<>(KernelClass.class);
    /** The same counts per Backend method name ({@code communication} for the sync), to see which kernel of a class costs. */
    private final Map<String, Counter> byKernel = new ConcurrentHashMap<>();
    private final ThreadLocal<int[]> depth = ThreadLocal.withInitial(() -> new int[1]);

    private static final class Counter {
        final LongAdder calls = new LongAdder();
        final DoubleAdder flops = new DoubleAdder();
        final DoubleAdder bytes = new DoubleAdder();
        final LongAdder nanos = new LongAdder();

        void add(double f, double b, long n) {
            calls.increment();
            flops.add(f);
            bytes.add(b);
            nanos.add(n);
        }

        Totals totals() {
            return new Totals(calls.sum(), flops.sum(), bytes.sum(), nanos.sum());
        }

        void reset() {
            calls.reset();
            flops.reset();
            bytes.reset();
            nanos.reset();
        }
    }

    public Profiler() {
        for (KernelClass k : KernelClass.values()) {
            counters.put(k, new Counter());
        }
    }

    /** A device that runs {@code device}'s kernels and counts them here; closing it closes {@code device}. */
    public Device wrap(Device device) {
        return new ProfilingDevice(device, this);
    }

    /** Runs {@code body} as communication: its time counts under {@link KernelClass#COMMUNICATION} with {@code bytes}. */
    public <T> T communication(double bytes, Supplier<T> body) {
        boolean outer = enter();
        long t0 = System.nanoTime();
        try {
            return body.get();
        } finally {
            exit();
            if (outer) {
                add(KernelClass.COMMUNICATION, KernelClass.COMMUNICATION.label(), 0, bytes, System.nanoTime() - t0);
            }
        }
    }

    /** {@link #communication(double, Supplier)} for a body without a result. */
    public void communication(double bytes, Runnable body) {
        communication(bytes, () -> {
            body.run();
            return null;
        });
    }

    /** Marks the current thread as inside a counted call; returns whether it is the outermost one. */
    boolean enter() {
        return depth.get()[0]++ == 0;
    }

    void exit() {
        depth.get()[0]--;
    }

    void add(KernelClass k, String kernel, double flops, double bytes, long nanos) {
        counters.get(k).add(flops, bytes, nanos);
        byKernel.computeIfAbsent(kernel, name -> new Counter()).add(flops, bytes, nanos);
    }

    /** What every class has accumulated since construction or the last {@link #reset}, in class order. */
    public Map<KernelClass, Totals> totals() {
        Map<KernelClass, Totals> out = new EnumMap<>(KernelClass.class);
        counters.forEach((k, c) -> out.put(k, c.totals()));
        return out;
    }

    /** The same per kernel (Backend method name, and {@code communication}) that ran since the last {@link #reset}, by name. */
    public Map<String, Totals> kernels() {
        Map<String, Totals> out = new TreeMap<>();
        byKernel.forEach((name, c) -> {
            Totals t = c.totals();
            if (t.calls() > 0) {
                out.put(name, t);
            }
        });
        return out;
    }

    /** Starts counting afresh (e.g. after warm-up); call it while no profiled kernel runs. */
    public void reset() {
        counters.values().forEach(Counter::reset);
        byKernel.values().forEach(Counter::reset);
    }
}
