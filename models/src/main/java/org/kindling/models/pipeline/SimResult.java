package org.kindling.models.pipeline;

/**
 * What a simulated step measured.
 *
 * @param makespan time from the first op to the last stage's last
 * @param busy each stage's computing time
 * @param peakInFlight each stage's most micro-batches forwarded and not yet backwarded at once
 * @param peakSets each stage's most whole activation sets held at once: kept ones plus the working
 *     set of a forward or recompute in progress (a checkpointed input counts as none)
 * @param recomputes recomputes run, all stages together
 */
public record SimResult(double makespan, double[] busy, int[] peakInFlight, int[] peakSets, int recomputes) {
    /** The share of stage-time spent idle: 1 − Σ busy / (S · makespan). */
    public double bubble() {
        double sum = 0;
        for (double b : busy) {
            sum += b;
        }
        return 1 - sum / (busy.length * makespan);
    }
}
