package org.kindling.models.train;

import java.util.Arrays;
import java.util.List;
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
import org.kindling.ops.Tensor;

/**
 * Training steps: gradient accumulation over micro-batches, global-norm clipping, the config's
 * {@link Optimizer} (AdamW by default, or M-FAC) on fp32 master weights (under {@code precision: bf16} the GEMMs
 * read bf16 copies of them, refreshed after each update), warmup + cosine schedule.
 * Deterministic: the same model, config and data give bit-identical weights. With a
 * {@link GradientSync} of several workers, the loss and gradients are means over every worker's
 * tokens, so all replicas take the same step.
 *
 * <p>Under {@code zero: 1} each worker needs only its shard of the summed gradients
 * ({@link ZeroShards}), updates only that shard with its shard of AdamW's moments, and the workers
 * then all-gather the weights: the same sums, norm and elementwise update as without sharding, so
 * the same bits. The gradient norm is summed per parameter in every mode for that reason: each
 * parameter's squared norm comes from the worker that holds its sum, and the host adds them in
 * parameter order.
 */
public final class Trainer implements AutoCloseable {
    private final Gpt model;
    private final TrainConfig cfg;
    private final GradientSync sync;
    private final Optimizer optimizer;
    /** Under zero 1: the workers' shards of the flat buffer ({@link ZeroShards}); null otherwise. */
    private final int[] shards;
    /** Under zero 1: the flat weights on the host, through which the workers all-gather them. */
    private final float[] gathered;
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
        Params params = model.params();
        params.setPrecision(cfg.precision());
        model.recompute(cfg.recompute());
        if (cfg.zero() == 1) {
            this.shards = ZeroShards.bounds(params, sync.world());
            this.gathered = new float[params.count()];
            this.optimizer = new AdamWOptimizer(params, cfg, shards[sync.rank()], shards[sync.rank() + 1]);
        } else {
            this.shards = null;
            this.gathered = null;
            this.optimizer = Optimizer.create(params, cfg);
        }
        sync.prepare(params, shards != null);
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

    /**
     * Collective, between steps (every worker calls it): brings the whole optimizer state to rank 0,
     * so that its {@link Optimizer#state()} holds every tensor a checkpoint saves. Without sharding
     * every worker holds it all already.
     */
    public void gatherOptimizerState() {
        if (shards != null) {
            ((AdamWOptimizer) optimizer).gather(sync, shards);
        }
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
        List<Param> trainable = params.list();
        metrics.clear(trainable.size());
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
                if (shards == null) {
                    sync.finishGradients(params);
                } else {
                    sync.finishGradients(params, shards);
                }
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
        // Each parameter's squared norm, from the summed gradients this worker holds (all of them, or its shard).
        Tensor squares = metrics.gradSquares(dev);
        for (int i = 0; i < trainable.size(); i++) {
            if (shards == null || ZeroShards.owns(params, trainable.get(i), shards[sync.rank()], shards[sync.rank() + 1])) {
                be.addSumOfSquares(squares.view(i, 1), trainable.get(i).grad(), 1f);
            }
        }
        // The step's one read-back: loss sum, squared gradient norms and the layers' device metrics.
        double[] own = metrics.collect();
        // The loss and the layers' metrics (and under zero 1 the shards' squared norms) travel together: one exchange per step.
        double[] local = metrics.toArray();
        int sharded = shards == null ? 0 : trainable.size();
        double[] summed = new double[1 + local.length + sharded];
        summed[0] = own[0];
        System.arraycopy(local, 0, summed, 1, local.length);
        // Only the owner adds a parameter's squared norm, so its sum over the workers is that value exactly.
        System.arraycopy(own, 1, summed, 1 + local.length, sharded);
        sync.allReduceSum(summed);
        double[] perParam = shards == null ? own : summed;
        int first = shards == null ? 1 : 1 + local.length;
        double squaredNorm = 0;
        for (int i = 0; i < trainable.size(); i++) {
            squaredNorm += perParam[first + i];
        }
        double norm = Math.sqrt(squaredNorm);
        double meanLoss = summed[0] / counts[0];
        SortedMap<String, Double> named = metrics.values(Arrays.copyOfRange(summed, 1, 1 + local.length));
        if (!Double.isFinite(meanLoss) || !Double.isFinite(norm)) {
            throw new NonFiniteException(step + 1, meanLoss, firstNonFinite());
        }
        float clip = cfg.gradClip() > 0 && norm > cfg.gradClip() ? (float) (cfg.gradClip() / norm) : 1f;
        float lr = (float) cfg.lrAt(step);
        optimizer.step(params, step, lr, clip);
        if (shards != null) {
            // Each worker updated its shard: every worker takes every shard's new weights.
            int lo = shards[sync.rank()];
            int hi = shards[sync.rank() + 1];
            if (hi > lo) {
                System.arraycopy(params.values().view(lo, hi - lo).toFloatArray(), 0, gathered, lo, hi - lo);
            }
            sync.allGather(gathered, shards);
            params.values().copyFrom(gathered);
        }
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
    public static long dropoutSeed(long runSeed, int rank, int step, int micro) {
        return Seeds.derive(runSeed, rank, step, micro);
    }

    /** Name of the first parameter, in layer order, with a NaN or ±∞ gradient (under zero 1: of those this worker sums). */
    private String firstNonFinite() {
        Backend be = model.device().backend();
        Params params = model.params();
        for (Param p : params.list()) {
            boolean held = shards == null || ZeroShards.owns(params, p, shards[sync.rank()], shards[sync.rank() + 1]);
            if (held && !Double.isFinite(be.sumOfSquares(p.grad()))) {
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
