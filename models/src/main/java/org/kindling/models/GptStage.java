package org.kindling.models;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.Recompute;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.nn.Activation;
import org.kindling.models.nn.Activations;
import org.kindling.models.nn.GemmInput;
import org.kindling.models.nn.LayerNorm;
import org.kindling.models.nn.Param;
import org.kindling.models.nn.Params;
import org.kindling.models.nn.Precision;
import org.kindling.models.nn.SavedActivations;
import org.kindling.models.nn.Seqs;
import org.kindling.models.nn.StepContext;
import org.kindling.ops.Backend;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Seeds;
import org.kindling.ops.Tensor;

/**
 * One stage of a {@link Gpt} cut into a pipeline of S stages: stage 0 holds the embeddings and its
 * blocks, a middle stage a contiguous range of blocks, the last stage its blocks, the final
 * LayerNorm and the LM head tied to the token embedding (so wte lives on the first and the last
 * stage; their two gradients are summed between them). Its layers are Gpt's own, under the whole
 * model's parameter names, running the same kernels in the same order, so a pipeline's gradients
 * are the bits of {@link Gpt} accumulating the same micro-batches.
 *
 * <p>Several micro-batches may be in flight (1F1B): the layers hold one micro-batch's activations at
 * a time; a kept forward's are copied aside ({@link SavedActivations}) once another micro-batch is
 * about to overwrite them and copied back before its backward, and a checkpointed forward keeps
 * only its input, from which {@link #recompute} runs the forward again. Every micro-batch of a step
 * must have the same token count, so each buffer keeps its shape (and the layers' references to it).
 */
public final class GptStage implements AutoCloseable {
    private final ModelConfig cfg;
    private final Device dev;
    private final int index;
    private final int lo;
    private final boolean first;
    private final boolean last;
    private final Params params;
    /** wte: the token embedding on the first stage, the tied head on the last, null between. */
    private final Params.Handle wte;
    private final Params.Handle wpe;
    private final List<Block> blocks;
    private final LayerNorm lnf;
    private final GemmInput headIn;
    private final GemmInput headScratch;
    private final StepContext step = new StepContext();
    /** What a forward writes and its backward reads, part of a micro-batch's saved state. */
    private final Activations acts;
    /** Backward-only buffers, never saved. */
    private final Activations grads;
    private final Activation ids;
    private final Activation positions;
    private final Activation cuSeqlens;
    private final Activation targets;
    /** The residual stream into each block of the stage and out of its last [T, C]. */
    private final Activation[] xs;
    private final Activation posEmb;
    private final Activation xf;
    /** logits [T, V], overwritten by dlogits; losses [T]. */
    private final Activation logits;
    private final Activation losses;
    private final Activation dxf;
    private final Activation[] dres;
    private final Activation demb;
    /** Summed loss of the step's micro-batches on the last stage (F32[1]). */
    private final Tensor lossSum;

    /** The step in progress. */
    private List<TokenBatch> batches = List.of();
    private long[] seeds;
    private float gradScale;
    private double tokenWeight;
    /** Inputs received and forwarded, held until their backward (not on the first stage, which re-embeds). */
    private final Map<Integer, Tensor> inputs = new HashMap<>();
    /** Micro-batches forwarded and not yet backwarded. */
    private final List<Integer> inFlight = new ArrayList<>();
    private final Map<Integer, SavedActivations> stashed = new HashMap<>();
    /** The micro-batch whose activations the layers hold (-1: none), and whether they must survive another's forward. */
    private int live = -1;
    private boolean liveKept;
    private long peakBytes;

    /**
     * Stage {@code stage} of {@code stages} of a model of {@code cfg}, with blocks as {@link #split}
     * assigns them. Its weights start as this seed's; a pipeline copies one model's in to train it.
     */
    public GptStage(ModelConfig cfg, Device dev, long seed, int stage, int stages) {
        int[] bounds = split(cfg, stages);
        if (stage < 0 || stage >= stages) {
            throw new IllegalArgumentException("pipeline stage must be in [0, " + stages + "), got " + stage);
        }
        this.cfg = cfg;
        this.dev = dev;
        this.index = stage;
        this.lo = bounds[stage];
        this.first = stage == 0;
        this.last = stage == stages - 1;
        Params.Builder pb = new Params.Builder();
        Gpt.Layout layout = Gpt.declare(cfg, dev, seed, step, pb, lo, bounds[stage + 1], first, last);
        wte = layout.wte();
        wpe = layout.wpe();
        blocks = layout.blocks();
        lnf = layout.lnf();
        headIn = pb.gemmInput("lm_head.x");
        headScratch = pb.gemmInput("lm_head.scratch");
        params = pb.build(dev, seed);
        acts = new Activations(dev, "stage" + stage);
        grads = new Activations(dev, "stage" + stage + ".grad");
        ids = acts.i32("ids");
        positions = acts.i32("positions");
        cuSeqlens = acts.i32("cu_seqlens");
        targets = acts.i32("targets");
        xs = new Activation[blocks.size() + 1];
        for (int i = 0; i < xs.length; i++) {
            xs[i] = acts.f32("x" + (lo + i));
        }
        posEmb = acts.f32("pos_emb");
        xf = acts.f32("xf");
        logits = acts.f32("logits");
        losses = acts.f32("losses");
        dxf = grads.f32("dxf");
        dres = new Activation[] {grads.f32("dx_a"), grads.f32("dx_b")};
        demb = grads.f32("demb");
        lossSum = dev.allocate(DType.F32, 1);
    }

    /**
     * Stage {@code stage} of {@code stages} starting from exactly the weights and fixed tensors a
     * whole {@link Gpt} of {@code seed} starts with, so that a pipeline trains the model a single
     * process would, and the first and the last stage hold the same tied weight. The whole model's
     * initial values are drawn a tensor at a time and only this stage's are kept.
     */
    public static GptStage initialized(ModelConfig cfg, Device dev, long seed, int stage, int stages) {
        GptStage out = new GptStage(cfg, dev, seed, stage, stages);
        try {
            Map<String, Param> own = new HashMap<>();
            out.params.list().forEach(p -> own.put(p.name(), p));
            out.params.fixed().forEach(p -> own.put(p.name(), p));
            Gpt.initialValues(cfg, seed, own::containsKey, (name, values) -> own.get(name).value().copyFrom(values));
            out.params.refreshShadow();
            return out;
        } catch (RuntimeException | Error e) {
            out.close();
            throw e;
        }
    }

    /**
     * Block boundaries of {@code stages} stages: stage s holds blocks [b[s], b[s+1]), at least one
     * each, chosen to make the most expensive stage as cheap as can be. A block costs its
     * parameters (2 FLOPs per weight per token in its GEMMs, the attention scores' T-dependent term
     * left out, alike for every block of a mixer); the embedding lookup costs nothing, the tied
     * head's GEMM 2·V·C per token on the last stage.
     */
    public static int[] split(ModelConfig cfg, int stages) {
        int n = cfg.nLayer();
        if (cfg.deq() != null) {
            throw new IllegalArgumentException("pipeline stages: a deep equilibrium model has one block and no layers to split");
        }
        if (stages < 1 || stages > n) {
            throw new IllegalArgumentException("pipeline stages must be in [1, n_layer = " + n + "], got " + stages);
        }
        String refusal = Recompute.FULL.refusal(cfg);
        if (refusal != null) {
            throw new IllegalArgumentException("pipeline stages run a forward again from a stage's input, but " + refusal);
        }
        long[] cost = new long[n];
        for (Map.Entry<String, List<Integer>> e : Gpt.parameterShapes(cfg).entrySet()) {
            if (e.getKey().startsWith("h.")) {
                int l = Integer.parseInt(e.getKey().substring(2, e.getKey().indexOf('.', 2)));
                cost[l] += e.getValue().stream().mapToLong(Integer::longValue).reduce(1, (a, b) -> a * b);
            }
        }
        long head = (long) cfg.vocab() * cfg.dModel();
        // best[s][j]: the least maximum stage cost of blocks [0, j) in s stages; from[s][j] where the last starts.
        long[] prefix = new long[n + 1];
        for (int l = 0; l < n; l++) {
            prefix[l + 1] = prefix[l] + cost[l];
        }
        long[][] best = new long[stages + 1][n + 1];
        int[][] from = new int[stages + 1][n + 1];
        for (long[] row : best) {
            Arrays.fill(row, Long.MAX_VALUE);
        }
        best[0][0] = 0;
        for (int s = 1; s <= stages; s++) {
            for (int j = s; j <= n; j++) {
                for (int i = s - 1; i < j; i++) {
                    if (best[s - 1][i] == Long.MAX_VALUE) {
                        continue;
                    }
                    long stageCost = prefix[j] - prefix[i] + (s == stages && j == n ? head : 0);
                    long m = Math.max(best[s - 1][i], stageCost);
                    if (m < best[s][j]) {
                        best[s][j] = m;
                        from[s][j] = i;
                    }
                }
            }
        }
        int[] bounds = new int[stages + 1];
        bounds[stages] = n;
        for (int s = stages; s > 0; s--) {
            bounds[s - 1] = from[s][bounds[s]];
        }
        return bounds;
    }

    public int index() {
        return index;
    }

    public boolean first() {
        return first;
    }

    public boolean last() {
        return last;
    }

    public Device device() {
        return dev;
    }

    public Params params() {
        return params;
    }

    /** The tied embedding/head weight on the first and last stage, null on a middle one. */
    public Param tied() {
        return wte == null ? null : wte.get();
    }

    /**
     * Starts optimizer step {@code stepIndex} over {@code batches}: zeroes the gradients and the loss.
     *
     * @param seeds each micro-batch's dropout seed (as {@link Gpt#train} takes it)
     * @param gradScale the loss weight of one predicted token: 1 / the step's predicted tokens
     * @param tokenWeight 1 / the step's tokens
     */
    public void startStep(long stepIndex, List<TokenBatch> batches, long[] seeds, float gradScale, double tokenWeight) {
        if (batches.isEmpty() || seeds.length != batches.size()) {
            throw new IllegalArgumentException("stage " + index + ": " + batches.size() + " micro-batches and " + seeds.length
                    + " seeds; a step needs at least one, with a seed each");
        }
        for (TokenBatch b : batches) {
            for (int i = 0; i < b.sequences(); i++) {
                int len = b.cuSeqlens()[i + 1] - b.cuSeqlens()[i];
                if (cfg.limited() && len > cfg.maxSeq()) {
                    throw new IllegalArgumentException("stage " + index + ": a sequence has " + len + " tokens but the model's "
                            + "max_seq is " + cfg.maxSeq());
                }
            }
            if (b.size() != batches.get(0).size()) {
                throw new IllegalArgumentException("pipeline micro-batches of a step must have equal token counts (a stage's "
                        + "saved activations keep their shapes), got " + batches.get(0).size() + " and " + b.size());
            }
        }
        this.batches = List.copyOf(batches);
        this.seeds = seeds.clone();
        this.gradScale = gradScale;
        this.tokenWeight = tokenWeight;
        params.zeroGrad();
        dev.backend().fill(lossSum, 0f);
        for (Block b : blocks) {
            b.mixer.startStep(stepIndex);
        }
        // What a failed step left behind.
        stashed.values().forEach(SavedActivations::close);
        stashed.clear();
        inputs.values().forEach(Tensor::close);
        inputs.clear();
        inFlight.clear();
        live = -1;
        peakBytes = 0;
    }

    /**
     * The forward of micro-batch {@code mb}: from {@code input} [T, C] (which this stage then owns;
     * null on the first stage, which embeds the batch's tokens). Returns the output [T, C], valid
     * until the stage's next pass, or null on the last stage, which adds the loss and leaves dlogits.
     *
     * @param keep keep every activation for the backward; else only the input ({@link #recompute} first)
     */
    public Tensor forward(int mb, Tensor input, boolean keep) {
        TokenBatch batch = batch(mb);
        if (inFlight.contains(mb)) {
            throw new IllegalStateException("stage " + index + ": micro-batch " + mb + " forwarded twice");
        }
        if (first != (input == null)) {
            throw new IllegalArgumentException("stage " + index + ": " + (first ? "the first stage takes no input" : "needs an input"));
        }
        if (!first) {
            checkShape(input, batch.size(), "input of micro-batch " + mb);
            inputs.put(mb, input);
        }
        inFlight.add(mb);
        run(mb, true);
        live = mb;
        liveKept = keep;
        track();
        return last ? null : xs[blocks.size()].saved(batch.size(), cfg.dModel());
    }

    /** The forward of a checkpointed micro-batch again, from its kept input: its backward finds the activations. */
    public void recompute(int mb) {
        if (!inFlight.contains(mb) || live == mb && liveKept || stashed.containsKey(mb)) {
            throw new IllegalStateException("stage " + index + ": recompute of micro-batch " + mb
                    + " needs it forwarded with only its input kept, and not recomputed since");
        }
        run(mb, false);
        live = mb;
        liveKept = true;
        track();
    }

    /**
     * The backward of micro-batch {@code mb} from the gradient of its output (null on the last
     * stage, which starts from its dlogits): parameter gradients +=. Returns the gradient of its
     * input, valid until the stage's next pass, or null on the first stage.
     */
    public Tensor backward(int mb, Tensor outputGrad) {
        TokenBatch batch = batch(mb);
        int t = batch.size();
        int c = cfg.dModel();
        if (!inFlight.contains(mb)) {
            throw new IllegalStateException("stage " + index + ": backward of micro-batch " + mb + ", which is not in flight");
        }
        if (last != (outputGrad == null)) {
            throw new IllegalArgumentException("stage " + index + ": " + (last ? "the last stage takes no output gradient"
                    : "needs its output's gradient"));
        }
        if (live != mb) {
            SavedActivations saved = stashed.remove(mb);
            if (saved == null) {
                throw new IllegalStateException("stage " + index + ": micro-batch " + mb
                        + "'s activations were neither kept nor recomputed before its backward");
            }
            stashLive();
            saved.restore();
            saved.close();
            live = mb;
        }
        step.train(seeds[mb], tokenWeight, values -> { });
        Seqs seqs = upload(batch);
        float p = dropout();
        Backend be = dev.backend();
        Tensor dx;
        if (last) {
            Tensor dh = dxf.zeros(t, c);
            Gpt.headBackward(wte, headIn, headScratch, dh, logits.saved(t, cfg.vocab()), xf.saved(t, c), wte.grad());
            dx = dres[0].zeros(t, c);
            lnf.backward(dx, dh);
        } else {
            checkShape(outputGrad, t, "output gradient of micro-batch " + mb);
            dx = dres[0].write(t, c);
            be.copy(dx, outputGrad);
        }
        for (int i = blocks.size() - 1, k = 1; i >= 0; i--, k ^= 1) {
            Tensor dprev = dres[k].zeros(t, c);
            blocks.get(i).dropout(p, Seeds.derive(step.seed(), lo + i));
            blocks.get(i).backward(dprev, dx, seqs);
            dx = dprev;
        }
        if (first) {
            if (p > 0) {
                Tensor d = demb.zeros(t, c);
                be.dropoutBackward(d, dx, p, step.seed());
                dx = d;
            }
            Gpt.embedBackward(wte, wpe, dx, ids.saved(t), seqs.positions());
        }
        step.eval();
        live = -1;
        inFlight.remove(Integer.valueOf(mb));
        Tensor in = inputs.remove(mb);
        if (in != null) {
            in.close();
        }
        return first ? null : dx;
    }

    /**
     * An evaluation forward of {@code batch} between steps: no dropout, nothing kept for a backward.
     * From {@code input} [T, C] (null on the first stage, which embeds the tokens; the caller keeps
     * it). Returns the output [T, C], valid until the stage's next pass, or, on the last stage, null
     * after adding the batch's summed loss over its predicted tokens to {@code lossSum[0]}.
     */
    public Tensor evaluate(TokenBatch batch, Tensor input, double[] lossSum) {
        if (!inFlight.isEmpty()) {
            throw new IllegalStateException("stage " + index + ": evaluation runs between steps, but micro-batches "
                    + inFlight + " are in flight");
        }
        if (first != (input == null)) {
            throw new IllegalArgumentException("stage " + index + ": " + (first ? "the first stage takes no input" : "needs an input"));
        }
        int t = batch.size();
        int c = cfg.dModel();
        if (!first) {
            checkShape(input, t, "evaluation input");
        }
        live = -1;
        step.eval();
        Seqs seqs = upload(batch);
        Backend be = dev.backend();
        Tensor x = xs[0].write(t, c);
        if (first) {
            Gpt.embed(wte, wpe, x, ids.saved(t), seqs.positions(), wpe == null ? null : posEmb.write(t, c));
        } else {
            be.copy(x, input);
        }
        for (int i = 0; i < blocks.size(); i++) {
            Tensor y = xs[i + 1].write(t, c);
            blocks.get(i).dropout(0f, 0);
            blocks.get(i).forward(y, x, seqs);
            x = y;
        }
        if (!last) {
            return x;
        }
        Tensor h = xf.write(t, c);
        lnf.forward(h, x);
        Tensor lg = logits.write(t, cfg.vocab());
        Gpt.headForward(wte, headIn, lg, h);
        Tensor ls = losses.write(t);
        be.crossEntropyForward(ls, lg, targets.write(t).copyFrom(batch.targets()), TokenBatch.IGNORE);
        for (double l : ls.toDoubleArray()) {
            lossSum[0] += l;
        }
        return null;
    }

    /** The step's summed loss over predicted tokens (last stage), read back from the device. */
    public double lossSum() {
        if (!last) {
            throw new IllegalStateException("stage " + index + " has no loss: only the last stage computes it");
        }
        return lossSum.toDoubleArray()[0];
    }

    /**
     * The most bytes of activations the stage held at once since the step began: its layers' saved
     * buffers, the copies of kept micro-batches and the inputs kept for backward and recomputation.
     */
    public long peakActivationBytes() {
        return peakBytes;
    }

    private void track() {
        long bytes = 0;
        for (Activation a : saved()) {
            bytes += a.bytesHeld();
        }
        for (SavedActivations s : stashed.values()) {
            bytes += s.bytes();
        }
        for (Tensor in : inputs.values()) {
            bytes += (long) in.numel() * in.dtype().bytes();
        }
        peakBytes = Math.max(peakBytes, bytes);
    }

    private TokenBatch batch(int mb) {
        if (mb < 0 || mb >= batches.size()) {
            throw new IllegalArgumentException("stage " + index + ": micro-batch " + mb + " is not one of the step's "
                    + batches.size());
        }
        return batches.get(mb);
    }

    private void checkShape(Tensor x, int t, String what) {
        if (x.rows() != t || x.cols() != cfg.dModel()) {
            throw new IllegalArgumentException("stage " + index + ": " + what + " is " + Arrays.toString(x.shape())
                    + ", expected [" + t + ", " + cfg.dModel() + "]");
        }
    }

    private float dropout() {
        return (float) cfg.dropout();
    }

    /** Every saved activation of the stage's layers and its own forward buffers. */
    private List<Activation> saved() {
        List<Activation> out = new ArrayList<>();
        acts.collectSaved(out);
        for (Block b : blocks) {
            b.collectSaved(out);
        }
        if (lnf != null) {
            lnf.collectSaved(out);
        }
        return out;
    }

    /** Copies the live micro-batch's activations aside when it must outlive the pass about to overwrite them. */
    private void stashLive() {
        if (live < 0 || !liveKept) {
            return;
        }
        if (params.precision() != Precision.FP32) {
            throw new IllegalStateException("stage " + index + ": micro-batch " + live + " keeps its activations while another "
                    + "runs, which only precision fp32 allows (a GEMM's bf16 operand copies are not saved per micro-batch); "
                    + "use a recomputing pipeline policy (1f1b-recompute, shifted)");
        }
        stashed.put(live, new SavedActivations(saved()));
        live = -1;
    }

    /** The forward of {@code mb} through the stage's layers; adds the loss to the step's sum if {@code countLoss}. */
    private void run(int mb, boolean countLoss) {
        stashLive();
        live = -1;
        TokenBatch batch = batch(mb);
        step.train(seeds[mb], tokenWeight, values -> { });
        Seqs seqs = upload(batch);
        int t = batch.size();
        int c = cfg.dModel();
        float p = dropout();
        Backend be = dev.backend();
        Tensor x = xs[0].write(t, c);
        if (first) {
            Gpt.embed(wte, wpe, x, ids.saved(t), seqs.positions(), wpe == null ? null : posEmb.write(t, c));
            if (p > 0) {
                be.dropoutForward(x, x, p, step.seed());
            }
        } else {
            be.copy(x, inputs.get(mb));
        }
        for (int i = 0; i < blocks.size(); i++) {
            Tensor y = xs[i + 1].write(t, c);
            blocks.get(i).dropout(p, Seeds.derive(step.seed(), lo + i));
            blocks.get(i).forward(y, x, seqs);
            x = y;
        }
        if (last) {
            Tensor h = xf.write(t, c);
            lnf.forward(h, x);
            Tensor lg = logits.write(t, cfg.vocab());
            Gpt.headForward(wte, headIn, lg, h);
            Tensor ls = losses.write(t);
            be.crossEntropyForwardBackward(ls, lg, lg, targets.write(t).copyFrom(batch.targets()), TokenBatch.IGNORE, gradScale);
            if (countLoss) {
                be.addSum(lossSum, ls, 1f);
            }
        }
        step.eval();
    }

    private Seqs upload(TokenBatch batch) {
        int t = batch.size();
        ids.write(t).copyFrom(batch.tokens());
        Tensor pos = positions.write(t).copyFrom(batch.positions());
        Tensor cu = cuSeqlens.write(batch.cuSeqlens().length).copyFrom(batch.cuSeqlens());
        return new Seqs(cu, pos, batch.cuSeqlens().clone());
    }

    @Override
    public void close() {
        stashed.values().forEach(SavedActivations::close);
        stashed.clear();
        inputs.values().forEach(Tensor::close);
        inputs.clear();
        blocks.forEach(Block::close);
        if (lnf != null) {
            lnf.close();
        }
        acts.close();
        grads.close();
        lossSum.close();
        step.close();
        params.close();
    }
}
