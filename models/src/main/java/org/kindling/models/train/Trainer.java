package org.kindling.models.train;

import java.util.Arrays;
import java.util.SortedMap;
import org.kindling.models.Gpt;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.nn.Param;
import org.kindling.models.nn.Params;
import org.kindling.models.nn.StepMetrics;
import org.kindling.ops.Backend;
import org.kindling.ops.Device;
import org.kindling.ops.NonFiniteInputException;
import org.kindling.ops.Seeds;

/**
 * Training steps: gradient accumulation over micro-batches, global-norm clipping, the config's
 * {@link Optimizer} (AdamW by default, or M-FAC) on fp32 master weights (under {@code precision: bf16} the GEMMs
 * read bf16 copies of them, refreshed after each update), warmup + cosine schedule.
 * Deterministic: the same model, config and data give bit-identical weights. With a
 * {@link GradientSync} of several workers, the loss and gradients are means over every worker's
 * tokens, so all replicas take the same step.
 */
public final class Trainer implements AutoCloseable {
    private final Gpt model;
    private final TrainConfig cfg;
    private final GradientSync sync;
    private final Optimizer optimizer;
    private int step;
    /** Filled in by the last {@link #step}: the phases' wall times in ms. */
    private double fwdMs;
    private double bwdMs;
    private double optMs;

    public Trainer(Gpt model, TrainConfig cfg) {
        this(model, cfg, GradientSync.SINGLE);
    }

    public Trainer(Gpt model, TrainConfig cfg, GradientSync sync) {
        this.model = model;
        this.cfg = cfg;
        this.sync = sync;
        model.params().setPrecision(cfg.precision());
        model.recompute(cfg.recompute());
        this.optimizer = Optimizer.create(model.params(), cfg);
    }

    public Gpt model() {
        return model;
    }

    public TrainConfig config() {
        return cfg;
    }

    public GradientSync sync() {
        return sync;
    }

    /** Optimizer steps taken so far. */
    public int stepCount() {
        return step;
    }

    /** The optimizer and its state. */
    public Optimizer optimizer() {
        return optimizer;
    }

    /** Restores the step counter (with the optimizer's state and weights loaded by a checkpoint). */
    public void restoreStep(int step) {
        if (step < 0) {
            throw new IllegalArgumentException("step must be >= 0, got " + step);
        }
        this.step = step;
    }

    public double lastForwardMs() {
        return fwdMs;
    }

    public double lastBackwardMs() {
        return bwdMs;
    }

    public double lastOptimizerMs() {
        return optMs;
    }

    /**
     * One optimizer step over {@code gradAccum} micro-batches from {@code data}.
     *
     * @throws NonFiniteException on a NaN/∞ loss or gradient, or one a layer meets in the forward pass
     *     (an MoE router's scores); the weights are left as before the step
     */
    public StepResult step(DataSource data) {
        long t0 = System.nanoTime();
        Params params = model.params();
        params.zeroGrad();
        TokenBatch[] batches = new TokenBatch[cfg.gradAccum()];
        double[] counts = {0, 0}; // predicted tokens, tokens
        for (int micro = 0; micro < batches.length; micro++) {
            batches[micro] = data.next();
            // A micro-batch may predict nothing (a replica's share of a batch with fewer sequences than
            // replicas, or one end-of-text chunk): it adds no loss and no gradient; only the whole step must predict.
            counts[0] += batches[micro].predicted();
            counts[1] += batches[micro].size();
        }
        // The loss is the mean over every predicted token of the step, on all workers together; an
        // auxiliary loss is a mean over every token of the step.
        sync.allReduceSum(counts);
        if (counts[0] == 0) {
            throw new IllegalArgumentException("step " + step + ": the step's micro-batches predict no token");
        }
        float scale = (float) (1.0 / counts[0]);
        fwdMs = 0;
        bwdMs = 0;
        model.startStep(step);
        StepMetrics metrics = model.metrics();
        metrics.clear();
        Device dev = model.device();
        for (int micro = 0; micro < batches.length; micro++) {
            long f0 = System.nanoTime();
            model.train(dropoutSeed(cfg.seed(), sync.rank(), step, micro), 1.0 / counts[1], sync::allReduceSum);
            try {
                model.forward(batches[micro], scale, metrics.lossSum(dev));
            } catch (NonFiniteInputException e) {
                throw new NonFiniteException(step + 1, "the forward pass met a non-finite value: " + e.getMessage());
            }
            long f1 = System.nanoTime();
            if (micro == batches.length - 1) {
                model.backward(sync::gradientsReady);
                sync.finishGradients(params);
            } else {
                model.backwardAccumulating();
            }
            model.eval();
            long f2 = System.nanoTime();
            fwdMs += (f1 - f0) / 1e6;
            bwdMs += (f2 - f1) / 1e6;
        }
        long o0 = System.nanoTime();
        Backend be = dev.backend();
        // Gradients are summed over the workers by now, so every worker computes the same norm.
        be.addSumOfSquares(metrics.gradSquares(dev), params.grads(), 1f);
        // The step's one read-back: loss sum, squared gradient norm and the layers' device metrics.
        double[] own = metrics.collect();
        double norm = Math.sqrt(own[1]);
        // The loss and the layers' metrics travel together: one exchange per step.
        double[] local = metrics.toArray();
        double[] summed = new double[local.length + 1];
        summed[0] = own[0];
        System.arraycopy(local, 0, summed, 1, local.length);
        sync.allReduceSum(summed);
        double meanLoss = summed[0] / counts[0];
        SortedMap<String, Double> named = metrics.values(Arrays.copyOfRange(summed, 1, summed.length));
        if (!Double.isFinite(meanLoss) || !Double.isFinite(norm)) {
            throw new NonFiniteException(step + 1, meanLoss, firstNonFinite());
        }
        float clip = cfg.gradClip() > 0 && norm > cfg.gradClip() ? (float) (cfg.gradClip() / norm) : 1f;
        float lr = (float) cfg.lrAt(step);
        optimizer.step(params, step, lr, clip);
        // The GEMMs of the next step read bf16 copies of the updated masters (a no-op under fp32).
        params.refreshShadow();
        step++;
        long t1 = System.nanoTime();
        optMs = (t1 - o0) / 1e6;
        return new StepResult(step, meanLoss, lr, norm, (long) counts[1], (t1 - t0) / 1e9, named);
    }

    /**
     * The dropout seed of a micro-batch: a function of the run seed, worker and position, so resumed
     * runs redraw the same masks and workers draw different ones.
     */
    static long dropoutSeed(long runSeed, int rank, int step, int micro) {
        return Seeds.derive(runSeed, rank, step, micro);
    }

    /** Name of the first parameter, in layer order, with a NaN or ±∞ gradient. */
    private String firstNonFinite() {
        Backend be = model.device().backend();
        for (Param p : model.params().list()) {
            if (!Double.isFinite(be.sumOfSquares(p.grad()))) {
                return p.name();
            }
        }
        return null;
    }

    @Override
    public void close() {
        optimizer.close();
    }
}
