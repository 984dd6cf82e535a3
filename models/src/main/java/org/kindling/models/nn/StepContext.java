package org.kindling.models.nn;

/**
 * What the layers of one model share about the pass in progress, beyond their inputs: whether it
 * trains, the seed of its random draws, the weight of one token in auxiliary losses, how to sum a
 * statistic over every worker, and where to report named metrics. The model owns one and hands it
 * to every layer through {@link LayerContext}; the trainer sets it before each micro-batch.
 */
public final class StepContext implements AutoCloseable {
    /** Sums values over every worker of a data-parallel run, in place; every worker calls it in the same order. */
    @FunctionalInterface
    public interface Reducer {
        void allReduceSum(double[] values);
    }

    private static final Reducer LOCAL = values -> { };

    private boolean training;
    private long seed;
    private double tokenWeight;
    private Reducer reducer = LOCAL;
    private final StepMetrics metrics = new StepMetrics();
    private final Workspace workspace = new Workspace();

    /**
     * A training forward pass follows.
     *
     * @param seed the micro-batch's seed: layers derive their random draws (router jitter) from it
     * @param tokenWeight 1 / the tokens of the whole step on all workers: the weight of one token in
     *     an auxiliary loss, so the step's auxiliary terms are token means over the global batch,
     *     whatever the split into workers and micro-batches
     * @param reducer sums a statistic over the workers (a no-op for one)
     */
    public void train(long seed, double tokenWeight, Reducer reducer) {
        if (!(tokenWeight > 0) || !Double.isFinite(tokenWeight)) {
            throw new IllegalArgumentException("token weight must be positive and finite, got " + tokenWeight);
        }
        this.training = true;
        this.seed = seed;
        this.tokenWeight = tokenWeight;
        this.reducer = reducer;
    }

    /** Passes that follow neither train nor talk to other workers (evaluation, generation). */
    public void eval() {
        training = false;
        seed = 0;
        tokenWeight = 0;
        reducer = LOCAL;
    }

    public boolean training() {
        return training;
    }

    public long seed() {
        return seed;
    }

    /** The weight of one token in an auxiliary loss; 0 outside training. */
    public double tokenWeight() {
        return tokenWeight;
    }

    /** Sums values over the workers of a training pass; local outside training. */
    public void allReduceSum(double[] values) {
        reducer.allReduceSum(values);
    }

    public StepMetrics metrics() {
        return metrics;
    }

    /** The scratch shared by the model's layers. */
    public Workspace workspace() {
        return workspace;
    }

    /** Frees the device sums of the metrics. */
    @Override
    public void close() {
        metrics.close();
    }
}
