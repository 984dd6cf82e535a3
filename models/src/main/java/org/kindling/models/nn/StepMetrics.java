package org.kindling.models.nn;

import java.util.Collections;
import java.util.SortedMap;
import java.util.TreeMap;

/**
 * Named scalars the layers report over one optimizer step (a MoE layer's load-balancing loss,
 * dropped fraction, …). Each metric is a numerator and a denominator summed over layers,
 * micro-batches and workers, so a worker's share is added, never averaged: a sum metric
 * ({@link #sum}) has no denominator, a ratio ({@link #ratio}) is Σ numerator / Σ denominator.
 * Every worker reports the same names, so the step's values travel as one array in name order.
 */
public final class StepMetrics {
    /** name → {numerator, denominator, 1 if a ratio}. */
    private final TreeMap<String, double[]> values = new TreeMap<>();

    /** Adds {@code value} to metric {@code name}, reported as the total. */
    public void sum(String name, double value) {
        add(name, value, 0, false);
    }

    /** Adds to metric {@code name}, reported as Σ numerator / Σ denominator. */
    public void ratio(String name, double numerator, double denominator) {
        add(name, numerator, denominator, true);
    }

    private void add(String name, double num, double den, boolean ratio) {
        double[] v = values.computeIfAbsent(name, k -> new double[] {0, 0, ratio ? 1 : 0});
        if ((v[2] == 1) != ratio) {
            throw new IllegalStateException("metric " + name + " is reported both as a sum and as a ratio");
        }
        v[0] += num;
        v[1] += den;
    }

    public void clear() {
        values.clear();
    }

    public boolean isEmpty() {
        return values.isEmpty();
    }

    /** Numerators then denominators, in name order: what workers sum. */
    public double[] toArray() {
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
}
