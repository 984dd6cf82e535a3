package org.kindling.models.train;

import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.kindling.models.Gpt;
import org.kindling.models.GptStage;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.Recompute;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.nn.Param;
import org.kindling.models.nn.Params;
import org.kindling.models.pipeline.ChannelInbox;
import org.kindling.models.pipeline.PipelineExecutor;
import org.kindling.models.pipeline.PipelinePolicy;
import org.kindling.models.pipeline.Schedule;
import org.kindling.models.pipeline.StageChannel;
import org.kindling.ops.Backend;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;

/**
 * Training steps of one stage of one replica of a pipeline-parallel run: S stages × R replicas,
 * worker {@code replica·S + stage}. A step runs the stage's program of a {@link Schedule} over its
 * {@code gradAccum} micro-batches (every stage of a replica reads the same batches), sums the
 * gradients over the stage's replicas ({@code replicas}, data parallelism), then sums the tied
 * embedding/head weight's two gradients between the first and the last stage over the stage
 * channels (relayed through the middle ones), and clips by the whole model's gradient norm.
 *
 * <p>The norm and the loss are summed over every worker ({@code everyone}) in a vector laid out by
 * the whole model's parameters ({@link Gpt#tensorOrder}): each parameter's squared norm comes from
 * replica 0 of the stage holding it (the tied weight from the first stage), zeros elsewhere, and
 * is added up in the model's order. With one replica and micro-batches of equal token counts a
 * step is so the bits of a {@link Trainer} accumulating the same micro-batches on the whole model:
 * the same kernels per layer, the same sums, the same AdamW update of each element (padding shorter
 * micro-batches changes the order of float sums only).
 */
public final class StageTrainer implements AutoCloseable {
    /** A stage's channels; null where the stage has no neighbour. */
    public record Links(StageChannel actIn, StageChannel actOut, StageChannel gradIn, StageChannel gradOut) {
    }

    private final GptStage stage;
    private final TrainConfig cfg;
    private final ModelConfig model;
    private final Schedule schedule;
    private final PipelineExecutor.Order execution;
    private final int stages;
    private final int replica;
    private final GradientSync replicas;
    private final GradientSync everyone;
    private final Links links;
    private final Duration timeout;
    private final Optimizer optimizer;
    /** The whole model's trainable parameters in order, and where each of this stage's sits among them. */
    private final List<String> order;
    private final int[] slot;
    private int step;
    private long peakActivationBytes;

    /**
     * @param order the schedule's static order, or AxoNN's message-driven one over the same channels
     *     ({@link ChannelInbox}: whichever activation or gradient arrived first, 1F1B's in-flight bound)
     * @param replicas this stage's replicas (rank = replica index); {@link GradientSync#SINGLE} for one
     * @param everyone every worker of the run, ranked replica·S + stage
     * @param timeout the longest a stage waits for a message
     */
    public StageTrainer(GptStage stage, int stages, ModelConfig model, TrainConfig cfg, PipelinePolicy policy,
                        PipelineExecutor.Order order, GradientSync replicas, GradientSync everyone, Links links, Duration timeout) {
        String refusal = refusal(cfg);
        if (refusal != null) {
            throw new IllegalArgumentException("pipeline stages: " + refusal);
        }
        if (everyone.world() != stages * replicas.world() || everyone.rank() != replicas.rank() * stages + stage.index()) {
            throw new IllegalArgumentException("pipeline worker " + everyone.rank() + " of " + everyone.world() + " is not stage "
                    + stage.index() + " of replica " + replicas.rank() + " (" + stages + " stages × " + replicas.world()
                    + " replicas, ranked replica·stages + stage)");
        }
        boolean hasUp = stage.index() > 0;
        boolean hasDown = stage.index() + 1 < stages;
        if ((links.actIn() != null) != hasUp || (links.gradOut() != null) != hasUp || (links.actOut() != null) != hasDown
                || (links.gradIn() != null) != hasDown) {
            throw new IllegalArgumentException("pipeline stage " + stage.index() + " of " + stages + " needs channels to "
                    + (hasUp ? "the previous stage" : "no previous stage") + " and " + (hasDown ? "the next" : "no next one"));
        }
        this.stage = stage;
        this.stages = stages;
        this.model = model;
        this.cfg = cfg;
        this.schedule = Schedule.build(stages, cfg.gradAccum(), policy);
        this.execution = order;
        this.replica = replicas.rank();
        this.replicas = replicas;
        this.everyone = everyone;
        this.links = links;
        this.timeout = timeout;
        Params params = stage.params();
        params.setPrecision(cfg.precision());
        this.order = Gpt.parameterOrder(model);
        Map<String, Integer> index = new HashMap<>();
        for (int i = 0; i < this.order.size(); i++) {
            index.put(this.order.get(i), i);
        }
        List<Param> own = params.list();
        this.slot = new int[own.size()];
        for (int i = 0; i < own.size(); i++) {
            Integer at = index.get(own.get(i).name());
            if (at == null) {
                throw new IllegalStateException("stage " + stage.index() + "'s parameter " + own.get(i).name()
                        + " is not one of the model's");
            }
            slot[i] = at;
        }
        this.optimizer = Optimizer.create(params, cfg);
        try {
            replicas.prepare(params, false);
        } catch (RuntimeException | Error e) {
            optimizer.close();
            throw e;
        }
    }

    /** Why a run with {@code cfg} cannot train as pipeline stages, or null when it can. */
    public static String refusal(TrainConfig cfg) {
        if (cfg.optimizer().isMfac()) {
            return "M-FAC's update mixes every parameter of the model, which no stage holds; use adamw";
        }
        if (cfg.zero() != 0) {
            return "zero " + cfg.zero() + " shards the optimizer across data-parallel workers, not stages; use zero 0";
        }
        if (cfg.recompute() != Recompute.NONE) {
            return "recompute " + cfg.recompute() + " is chosen by the pipeline policy instead (1f1b-recompute, stage-aware, "
                    + "shifted); use recompute none";
        }
        return null;
    }

    public GptStage stage() {
        return stage;
    }

    public int stages() {
        return stages;
    }

    public int replica() {
        return replica;
    }

    public TrainConfig config() {
        return cfg;
    }

    public Optimizer optimizer() {
        return optimizer;
    }

    /** This stage's replicas. */
    public GradientSync replicas() {
        return replicas;
    }

    /** Every worker of the run. */
    public GradientSync everyone() {
        return everyone;
    }

    /** The whole model's tensors in checkpoint order (for {@link org.kindling.models.io.Checkpoints#saveParts}). */
    public List<String> tensorOrder() {
        return Gpt.tensorOrder(model);
    }

    /** The whole model's tensor names and their optimizer states' ({@code m.NAME}, {@code v.NAME}): what a resume may skip. */
    public java.util.Set<String> modelTensors() {
        return new java.util.HashSet<>(Gpt.tensorOrder(model));
    }

    public int stepCount() {
        return step;
    }

    /** Restores the step counter (the weights and optimizer state restored from a checkpoint). */
    public void restoreStep(int step) {
        if (step < 0) {
            throw new IllegalArgumentException("step must be >= 0, got " + step);
        }
        this.step = step;
    }

    /** The most activation bytes this stage held at once in any step so far. */
    public long peakActivationBytes() {
        return peakActivationBytes;
    }

    /**
     * One optimizer step over {@code batches}, the replica's {@code gradAccum} micro-batches (the same
     * on every stage of the replica). Micro-batches of fewer tokens than the step's longest are
     * {@link TokenBatch#padded padded} to it, since a stage's saved activations keep one shape per step.
     *
     * @throws NonFiniteException on a NaN/∞ loss or gradient norm; the weights are left as before the step
     */
    public StepResult step(List<TokenBatch> batches) {
        long t0 = System.nanoTime();
        if (batches.size() != cfg.gradAccum()) {
            throw new IllegalArgumentException("a pipeline step takes grad_accum = " + cfg.gradAccum() + " micro-batches, got "
                    + batches.size());
        }
        double[] counts = {0, 0}; // predicted tokens, tokens
        // At least one token: a replica's step may be empty where the others' are not (an epoch's last).
        int longest = 1;
        for (TokenBatch b : batches) {
            counts[0] += b.predicted();
            counts[1] += b.size();
            longest = Math.max(longest, b.size());
        }
        replicas.allReduceSum(counts);
        if (counts[0] == 0) {
            throw new IllegalArgumentException("step " + step + ": the step's micro-batches predict no token");
        }
        List<TokenBatch> shaped = new ArrayList<>();
        for (TokenBatch b : batches) {
            shaped.add(b.padded(longest, model.limited() ? model.maxSeq() : 0));
        }
        long[] seeds = new long[batches.size()];
        for (int mb = 0; mb < seeds.length; mb++) {
            seeds[mb] = Trainer.dropoutSeed(cfg.seed(), replica, step, mb);
        }
        stage.startStep(step, shaped, seeds, (float) (1.0 / counts[0]), 1.0 / counts[1]);
        int s = stage.index();
        if (execution == PipelineExecutor.Order.STATIC) {
            PipelineExecutor.runProgram(stage, schedule.programs().get(s), links.actIn(), links.actOut(), links.gradIn(),
                    links.gradOut(), timeout, null);
        } else {
            try (ChannelInbox inbox = new ChannelInbox("stage " + s + "'s inbox", links.actIn(), links.gradIn(), batches.size(),
                    timeout)) {
                PipelineExecutor.runMessageDriven(stage, batches.size(), schedule.checkpoints()[s], schedule.inFlightBounds()[s],
                        inbox, links.actOut(), links.gradOut(), timeout, null);
            }
        }
        peakActivationBytes = Math.max(peakActivationBytes, stage.peakActivationBytes());
        Params params = stage.params();
        Device dev = stage.device();
        replicas.gradientsReady(params.list(), dev.fence());
        replicas.finishGradients(params);
        // After the replicas' sums, so the first and the last stage end with the same bits of it.
        exchangeTied(batches.size());
        double[] summed = new double[1 + order.size()];
        if (stage.last()) {
            summed[0] = stage.lossSum();
        }
        if (replicas.rank() == 0) {
            squares(params, dev, summed);
        }
        everyone.allReduceSum(summed);
        double squaredNorm = 0;
        for (int i = 1; i < summed.length; i++) {
            squaredNorm += summed[i];
        }
        double norm = Math.sqrt(squaredNorm);
        double meanLoss = summed[0] / counts[0];
        if (!Double.isFinite(meanLoss) || !Double.isFinite(norm)) {
            throw new NonFiniteException(step + 1, meanLoss, firstNonFinite(summed));
        }
        float clip = cfg.gradClip() > 0 && norm > cfg.gradClip() ? (float) (cfg.gradClip() / norm) : 1f;
        float lr = (float) cfg.lrAt(step);
        optimizer.step(params, step, lr, clip);
        params.refreshShadow();
        step++;
        return new StepResult(step, meanLoss, lr, norm, (long) counts[1], (System.nanoTime() - t0) / 1e9, new TreeMap<>());
    }

    /**
     * Collective over the replica's stages, between steps: the evaluation forward of {@code batch}
     * through every stage (activations tagged micro-batch 0). Returns {summed loss, predicted tokens}
     * on the last stage, zeros on the others, so a sum over every worker counts each replica once.
     */
    public double[] evaluate(TokenBatch batch) {
        double[] loss = {0};
        Tensor in = stage.first() ? null : PipelineExecutor.onDevice(stage, links.actIn().receive(0, timeout));
        try {
            Tensor out = stage.evaluate(batch, in, loss);
            if (out != null) {
                links.actOut().send(0, PipelineExecutor.copy(out), timeout);
            }
        } finally {
            if (in != null) {
                in.close();
            }
        }
        return stage.last() ? new double[] {loss[0], batch.predicted()} : new double[] {0, 0};
    }

    /** Each of this stage's parameters' squared gradient norm at its place in the model's order (the tied one on the first stage only). */
    private void squares(Params params, Device dev, double[] into) {
        List<Param> own = params.list();
        Param tied = stage.tied();
        Backend be = dev.backend();
        try (Tensor sq = dev.allocate(DType.F32, Math.max(1, own.size()))) {
            be.fill(sq, 0f);
            for (int i = 0; i < own.size(); i++) {
                if (own.get(i) != tied || stage.first()) {
                    be.addSumOfSquares(sq.view(i, 1), own.get(i).grad(), 1f);
                }
            }
            float[] host = sq.toFloatArray();
            for (int i = 0; i < own.size(); i++) {
                into[1 + slot[i]] = host[i];
            }
        }
    }

    private String firstNonFinite(double[] summed) {
        for (int i = 0; i < order.size(); i++) {
            if (!Double.isFinite(summed[1 + i])) {
                return order.get(i);
            }
        }
        return null;
    }

    /** Rows of the tied weight's gradient per message: bounded, so a large vocabulary fits a link's frames. */
    public static int tiedRowsPerMessage(ModelConfig model) {
        return Math.max(1, Math.min(model.vocab(), TIED_FLOATS_PER_MESSAGE / model.dModel()));
    }

    /** Floats of the tied weight's gradient per message at most (64 MiB). */
    private static final int TIED_FLOATS_PER_MESSAGE = 1 << 24;

    /**
     * The tied weight's gradient becomes embedding part + head part on the first and the last stage:
     * the last sends its part up (middle stages pass it on), the first adds it to its own, as the
     * trainer does, and sends the sum down. The messages carry {@link #tiedRowsPerMessage} rows each
     * and are tagged micro-batch {@code tag}, one past the step's last, so they cannot be taken for a
     * micro-batch's.
     */
    private void exchangeTied(int tag) {
        if (stages == 1) {
            return;
        }
        int rows = tiedRowsPerMessage(model);
        int v = model.vocab();
        int c = model.dModel();
        for (int r0 = 0; r0 < v; r0 += rows) {
            int n = Math.min(rows, v - r0);
            if (stage.last()) {
                links.gradOut().send(tag, PipelineExecutor.copy(stage.tied().grad().view(r0 * c, n, c)), timeout);
            } else if (stage.first()) {
                Tensor own = stage.tied().grad().view(r0 * c, n, c);
                float[] sum = own.toFloatArray();
                float[] head;
                try (Tensor t = links.gradIn().receive(tag, timeout)) {
                    head = checkTied(t.toFloatArray(), sum.length, "last");
                }
                for (int i = 0; i < sum.length; i++) {
                    sum[i] += head[i];
                }
                own.copyFrom(sum);
                links.actOut().send(tag, PipelineExecutor.copy(own), timeout);
            } else {
                links.gradOut().send(tag, links.gradIn().receive(tag, timeout), timeout);
                links.actOut().send(tag, links.actIn().receive(tag, timeout), timeout);
            }
        }
        if (stage.last()) {
            for (int r0 = 0; r0 < v; r0 += rows) {
                int n = Math.min(rows, v - r0);
                try (Tensor t = links.actIn().receive(tag, timeout)) {
                    stage.tied().grad().view(r0 * c, n, c).copyFrom(checkTied(t.toFloatArray(), n * c, "first"));
                }
            }
        }
    }

    private float[] checkTied(float[] v, int expected, String from) {
        if (v.length != expected) {
            throw new IllegalStateException("stage " + stage.index() + ": the " + from + " stage's piece of the gradient of "
                    + stage.tied().name() + " has " + v.length + " values, expected " + expected);
        }
        return v;
    }

    @Override
    public void close() {
        optimizer.close();
    }
}
