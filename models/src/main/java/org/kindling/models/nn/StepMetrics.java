package org.kindling.models.nn;

import java.util.Collections;
import java.util.SortedMap;
import java.util.TreeMap;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;

/**
 * Named scalars the layers report over one optimizer step (a MoE layer's load-balancing loss,
 * dropped fraction, …), and the step's own sums (loss, each parameter's squared gradient norm). Each metric is a
 * numerator and a denominator summed over layers, micro-batches and workers, so a worker's share
 * is added, never averaged: a sum metric ({@link #deviceSum}) has no denominator, a ratio
 * ({@link #ratio}) is Σ numerator / Σ denominator. What the device computes accumulates on the
 * device ({@link #deviceSum}, {@link #lossSum}, {@link #gradSquares}) in one buffer, which
 * {@link #collect} reads back once per step. Every worker reports the same names, so the step's
 * values travel as one array in name order.
 */
public final class StepMetrics implements AutoCloseable {
    /** Device sums a step may hold besides its own two: the cap on named device metrics. */
    public static final int MAX_DEVICE_SUMS = 64;
    private static final int LOSS = 0;
    private static final int RESERVED = 1;
    /** Where the parameters' squared gradient norms start in {@link #device}, after the named sums. */
    private static final int SQUARES = RESERVED + MAX_DEVICE_SUMS;

    /** name → {numerator, denominator, 1 if a ratio}. */
    private final TreeMap<String, double[]> values = new TreeMap<>();
    /** Named device sums → their slot in {@link #device}. */
    private final TreeMap<String, Integer> slots = new TreeMap<>();
    /** [SQUARES + squares] F32: the step's sums on the device, zeroed by {@link #clear}; null until first used. */
    private Tensor device;
    /** Parameters whose squared gradient norms the step sums ({@link #clear(int)}). */
    private int squares;
    /** Whether the device holds sums not yet read back. */
    private boolean pending;

    /** Adds to metric {@code name}, reported as Σ numerator / Σ denominator. */
    public void ratio(String name, double numerator, double denominator) {
        add(name, numerator, denominator, true);
    }

    private double[] add(String name, double num, double den, boolean ratio) {
        double[] v = values.computeIfAbsent(name, k -> new double[] {0, 0, ratio ? 1 : 0});
        if ((v[2] == 1) != ratio) {
            throw new IllegalStateException("metric " + name + " is reported both as a sum and as a ratio");
        }
        v[0] += num;
        v[1] += den;
        return v;
    }

    /**
     * The device element that sum metric {@code name} accumulates into (e.g. with
     * {@code Backend.addSum}); its value joins the metric's host part at {@link #collect}.
     */
    public Tensor deviceSum(String name, Device dev) {
        add(name, 0, 0, false);
        Integer slot = slots.get(name);
        if (slot == null) {
            if (slots.size() == MAX_DEVICE_SUMS) {
                throw new IllegalStateException("more than " + MAX_DEVICE_SUMS + " device metrics; " + name + " is one too many");
            }
            slot = RESERVED + slots.size();
            slots.put(name, slot);
        }
        return slot(slot, dev);
    }

    /** The device element the step's summed next-token loss accumulates into. */
    public Tensor lossSum(Device dev) {
        return slot(LOSS, dev);
    }

    /**
     * The device elements the squared norms of the step's parameter gradients accumulate into, one
     * per parameter ({@link #clear(int)} says how many): the trainer sums them on the host in
     * parameter order, so a worker that holds only some of the gradients can contribute its own.
     */
    public Tensor gradSquares(Device dev) {
        slot(LOSS, dev);
        return device.view(SQUARES, squares);
    }

    private Tensor slot(int i, Device dev) {
        if (device == null) {
            device = dev.allocate(DType.F32, SQUARES + squares);
        } else if (device.device() != dev) {
            throw new IllegalArgumentException("step metrics live on " + device.device() + ", not " + dev);
        }
        pending = true;
        return device.view(i, 1);
    }

    /**
     * Reads the device sums back (the step's one copy from the device), adds the named ones to
     * their metrics and returns the step's own: the loss sum, then each parameter's squared gradient norm.
     */
    public double[] collect() {
        if (device == null || !pending) {
            return new double[1 + squares];
        }
        pending = false;
        double[] d = device.toDoubleArray();
        for (var e : slots.entrySet()) {
            values.get(e.getKey())[0] += d[e.getValue()];
        }
        dev().backend().fill(device, 0f);
        double[] own = new double[1 + squares];
        own[0] = d[LOSS];
        System.arraycopy(d, SQUARES, own, 1, squares);
        return own;
    }

    private Device dev() {
        return device.device();
    }

    /** Starts a step: no metrics, device sums zero, no squared gradient norms. */
    public void clear() {
        clear(0);
    }

    /** Starts a step that sums the squared gradient norms of {@code params} parameters. */
    public void clear(int params) {
        if (params < 0) {
            throw new IllegalArgumentException("a step sums the squared gradient norms of >= 0 parameters, got " + params);
        }
        if (device != null && device.numel() < SQUARES + params) {
            device.close();
            device = null;
        }
        squares = params;
        values.clear();
        slots.clear();
        if (device != null) {
            dev().backend().fill(device, 0f);
        }
        pending = false;
    }

    public boolean isEmpty() {
        return values.isEmpty();
    }

    /** Numerators then denominators, in name order: what workers sum. Collects pending device sums first. */
    public double[] toArray() {
        collect();
        int n = values.size();
        double[] out = new double[2 * n];
        int i = 0;
        for (double[] v : values.values()) {
            out[i] = v[0];
            out[n + i] = v[1];
            i++;
        }
        return out;
    }

    /** The reported values, with numerators and denominators taken from {@code summed} (laid out as {@link #toArray}). */
    public SortedMap<String, Double> values(double[] summed) {
        int n = values.size();
        if (summed.length != 2 * n) {
            throw new IllegalArgumentException("expected " + 2 * n + " summed values for " + values.keySet() + ", got "
                    + summed.length);
        }
        SortedMap<String, Double> out = new TreeMap<>();
        int i = 0;
        for (var e : values.entrySet()) {
            out.put(e.getKey(), e.getValue()[2] == 1 ? summed[i] / summed[n + i] : summed[i]);
            i++;
        }
        return Collections.unmodifiableSortedMap(out);
    }

    /** The values of this worker alone. */
    public SortedMap<String, Double> values() {
        return values(toArray());
    }

    @Override
    public void close() {
        if (device != null) {
            device.close();
            device = null;
        }
    }
}
