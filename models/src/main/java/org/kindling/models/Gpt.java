package org.kindling.models;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.kindling.models.channel.ChannelMixer;
import org.kindling.models.channel.ChannelSpec;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.Recompute;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.mixers.MixerSpec;
import org.kindling.models.mixers.MixerState;
import org.kindling.models.mixers.TokenMixer;
import org.kindling.models.nn.Activation;
import org.kindling.models.nn.Activations;
import org.kindling.models.nn.GemmInput;
import org.kindling.models.nn.Init;
import org.kindling.models.nn.LayerContext;
import org.kindling.models.nn.LayerNorm;
import org.kindling.models.nn.Param;
import org.kindling.models.nn.ParamGroup;
import org.kindling.models.nn.Params;
import org.kindling.models.nn.Seqs;
import org.kindling.models.nn.StepContext;
import org.kindling.models.nn.StepMetrics;
import org.kindling.ops.Backend;
import org.kindling.ops.BinaryOp;
import org.kindling.ops.Device;
import org.kindling.ops.Fence;
import org.kindling.ops.Gemm;
import org.kindling.ops.Seeds;
import org.kindling.ops.Tensor;
import org.kindling.ops.reference.ReferenceDevice;

/**
 * A GPT-style decoder: token embeddings (plus learned position embeddings when the config has
 * them), pre-LayerNorm blocks (token mixer and channel mixer per layer, built from the config's
 * specs), a final LayerNorm and an LM head tied to the token embedding, trained with fused softmax
 * cross-entropy. Layers run forward in order and backward in reverse (llm.c); every activation
 * lives in declared, reused buffers.
 */
public final class Gpt implements AutoCloseable {
    private final ModelConfig cfg;
    private final Device dev;
    private final Params params;
    /** wte[V, C]; wpe[max_seq, C] or null without learned positions. */
    private final Params.Handle wte;
    private final Params.Handle wpe;
    /** The LM head's input xf as a GEMM operand (bf16 under precision bf16), and dlogits or a decoding step's xf. */
    private final GemmInput headIn;
    private final GemmInput headScratch;
    private final List<Block> blocks = new ArrayList<>();
    /** The fixed-point solve around the one block of a deep equilibrium model; null for a stack of blocks. */
    private final Deq deq;
    private final LayerNorm lnf;
    private final Activations acts;
    /** The batch on the device: ids, positions [T] and cu_seqlens [B+1] (I32). */
    private final Activation ids;
    private final Activation positions;
    private final Activation cuSeqlens;
    private final Activation targets;
    /** Residual stream into block l: x_l [T, C] (x_0 the embeddings, x_L the last block's output); xf = ln_f(x_L). */
    private final Activation[] xs;
    private final Activation posEmb;
    private final Activation xf;
    /** logits [T, V], overwritten by dlogits when the loss kernel computes gradients; losses [T]. */
    private final Activation logits;
    private final Activation losses;
    /** Backward: d(xf) [T, C], the residual gradient in two alternating [T, C] buffers, d(embeddings) through dropout. */
    private final Activation dxf;
    private final Activation[] dres;
    private final Activation demb;
    /** Decoding: ids and positions [R], x and y [R, C] (swapped per block), pos_emb and xf [R, C], logits [R, V]. */
    private final Activation stepIds;
    private final Activation stepPositions;
    private final Activation stepX;
    private final Activation stepY;
    private final Activation stepPosEmb;
    private final Activation stepXf;
    private final Activation stepLogits;
    /** Parameters in the order the backward pass finishes with them: ln_f, blocks last to first, embeddings. */
    private final List<List<Param>> backwardGroups = new ArrayList<>();
    /** The pass in progress, shared with every layer. */
    private final StepContext step = new StepContext();
    /** The head's part of the tied weight's gradient over a step's micro-batches so far, when {@link #headPending}. */
    private final Activation headGradSum;
    private boolean headPending;
    private Seqs seqs;
    private int predicted;
    private boolean gradReady;

    public Gpt(ModelConfig cfg, Device dev, long seed) {
        this.cfg = cfg;
        this.dev = dev;
        int c = cfg.dModel();
        Params.Builder pb = new Params.Builder();
        Layout layout = declare(cfg, dev, seed, step, pb, 0, cfg.nLayer(), true, true);
        wte = layout.wte();
        wpe = layout.wpe();
        blocks.addAll(layout.blocks());
        lnf = layout.lnf();
        headIn = pb.gemmInput("lm_head.x");
        headScratch = pb.gemmInput("lm_head.scratch");
        params = pb.build(dev, seed);
        deq = cfg.deq() == null ? null
                : new Deq(cfg.deq(), blocks.get(0), params, step, c, new Activations(dev, "deq", step.workspace()));
        acts = new Activations(dev, "gpt");
        ids = acts.i32("ids");
        positions = acts.i32("positions");
        cuSeqlens = acts.i32("cu_seqlens");
        targets = acts.i32("targets");
        xs = new Activation[cfg.nLayer() + 1];
        for (int l = 0; l < xs.length; l++) {
            xs[l] = acts.f32("x" + l);
        }
        posEmb = acts.f32("pos_emb");
        xf = acts.f32("xf");
        logits = acts.f32("logits");
        losses = acts.f32("losses");
        dxf = acts.f32("dxf");
        dres = new Activation[] {acts.f32("dx_a"), acts.f32("dx_b")};
        demb = acts.f32("demb");
        headGradSum = acts.f32("head_grad_sum");
        stepIds = acts.i32("step_ids");
        stepPositions = acts.i32("step_positions");
        stepX = acts.f32("step_x");
        stepY = acts.f32("step_y");
        stepPosEmb = acts.f32("step_pos_emb");
        stepXf = acts.f32("step_xf");
        stepLogits = acts.f32("step_logits");
        backwardGroups.add(withPrefix("ln_f."));
        for (int l = cfg.nLayer() - 1; l >= 0; l--) {
            backwardGroups.add(withPrefix("h." + l + "."));
        }
        backwardGroups.add(wpe == null ? List.of(wte.get()) : List.of(wte.get(), wpe.get()));
        if (backwardGroups.stream().mapToInt(List::size).sum() != params.list().size()) {
            throw new IllegalStateException("a parameter belongs to no backward group: " + params.list());
        }
    }

    /**
     * The model's layers and embedding handles, declared on a builder that has not allocated them yet;
     * a pipeline stage's share has null for the parts it does not hold (wte is the tied head on the last stage).
     */
    record Layout(Params.Handle wte, Params.Handle wpe, List<Block> blocks, LayerNorm lnf) {
    }

    /**
     * Declares blocks [lo, hi) under their names in the whole model, the embeddings if {@code
     * embeddings}, the final LayerNorm if {@code head}, and wte if either (it is also the tied head).
     */
    static Layout declare(ModelConfig cfg, Device dev, long seed, StepContext step, Params.Builder pb, int lo, int hi,
                          boolean embeddings, boolean head) {
        int c = cfg.dModel();
        Params.Handle wte = embeddings || head
                ? pb.add("wte.weight", Init.normal(cfg.initStd()), ParamGroup.DECAY, cfg.vocab(), c) : null;
        Params.Handle wpe = embeddings && cfg.posEmb() == ModelConfig.PosEmb.LEARNED
                ? pb.add("wpe.weight", Init.normal(cfg.initStd()), ParamGroup.DECAY, cfg.maxSeq(), c) : null;
        List<Block> blocks = new ArrayList<>();
        for (int l = lo; l < hi; l++) {
            String p = "h." + l;
            LayerNorm ln1 = new LayerNorm(pb, dev, p + ".ln_1", c, cfg.layerNormEps());
            MixerSpec ms = cfg.mixers().get(l);
            TokenMixer mixer = ms.build(new LayerContext(pb, dev, p + "." + ms.paramPrefix(), c, l, cfg.nLayer(), cfg.initStd(),
                    seed, step, cfg.maxSeq()));
            LayerNorm ln2 = new LayerNorm(pb, dev, p + ".ln_2", c, cfg.layerNormEps());
            ChannelSpec cs = cfg.channelMixers().get(l);
            ChannelMixer channel = cs.build(new LayerContext(pb, dev, p + "." + cs.paramPrefix(), c, l, cfg.nLayer(), cfg.initStd(),
                    seed, step, cfg.maxSeq()));
            blocks.add(new Block(ln1, mixer, ln2, channel, c, new Activations(dev, p, step.workspace())));
        }
        return new Layout(wte, wpe, blocks, head ? new LayerNorm(pb, dev, "ln_f", c, cfg.layerNormEps()) : null);
    }

    /**
     * Trainable parameters of a config and those one token uses (all but the experts a mixture of
     * experts does not send it to), counted from the declarations without allocating the weights.
     */
    public record ParameterCounts(long total, long active) {
    }

    public static ParameterCounts parameterCounts(ModelConfig cfg) {
        return counts(cfg, declarations(cfg).trainableCount());
    }

    /** The shape of every tensor a config's checkpoint holds, by name, from the declarations without allocating the weights. */
    public static Map<String, List<Integer>> parameterShapes(ModelConfig cfg) {
        return declarations(cfg).shapes();
    }

    /** Every tensor of a model of {@code cfg} in the order its {@link Params} lists them: trainable, then fixed. */
    public static List<String> tensorOrder(ModelConfig cfg) {
        return declarations(cfg).order();
    }

    /**
     * The initial values a model of {@code cfg} and {@code seed} starts with, tensor by tensor (see
     * {@link Params.Builder#initialValues}), for the names {@code wanted} accepts.
     */
    public static void initialValues(ModelConfig cfg, long seed, java.util.function.Predicate<String> wanted,
                                     java.util.function.BiConsumer<String, float[]> each) {
        declarations(cfg, seed).initialValues(seed, wanted, each);
    }

    /** The trainable parameters of a model of {@code cfg} in the order its {@link Params#list} gives them. */
    public static List<String> parameterOrder(ModelConfig cfg) {
        return declarations(cfg).trainableOrder();
    }

    private static Params.Builder declarations(ModelConfig cfg) {
        return declarations(cfg, 0);
    }

    /** The model's declarations; layers that draw fixed tensors from the model seed (not the init stream) take {@code seed}. */
    private static Params.Builder declarations(ModelConfig cfg, long seed) {
        Params.Builder pb = new Params.Builder();
        try (Device dev = ReferenceDevice.open()) {
            Layout layout = declare(cfg, dev, seed, new StepContext(), pb, 0, cfg.nLayer(), true, true);
            layout.blocks().forEach(Block::close);
            layout.lnf().close();
        }
        return pb;
    }

    private static ParameterCounts counts(ModelConfig cfg, long total) {
        long active = total;
        for (ChannelSpec cs : cfg.channelMixers()) {
            active -= cs.inactiveParameters(cfg.dModel());
        }
        return new ParameterCounts(total, active);
    }

    private List<Param> withPrefix(String prefix) {
        return params.list().stream().filter(p -> p.name().startsWith(prefix)).toList();
    }

    public ModelConfig config() {
        return cfg;
    }

    public Device device() {
        return dev;
    }

    public Params params() {
        return params;
    }

    /** This model's trainable parameters and those one token uses. */
    public ParameterCounts parameterCounts() {
        return counts(cfg, params.count());
    }

    /**
     * Training mode for the next {@link #forward}s: dropout on (never in {@link #logits} or
     * decoding), router jitter and auxiliary losses on.
     *
     * @param seed draws this forward's masks and noise, so a step's randomness is reproducible
     * @param tokenWeight 1 / the step's tokens on all workers: the weight of a token in auxiliary losses
     * @param reducer sums the statistics layers share over the workers (MoE routing counts)
     */
    public void train(long seed, double tokenWeight, StepContext.Reducer reducer) {
        step.train(seed, tokenWeight, reducer);
    }

    /** Evaluation mode: no dropout, no jitter, no auxiliary losses, no communication. */
    public void eval() {
        step.eval();
    }

    /** What the layers reported since the last {@link StepMetrics#clear}: the trainer clears it every step. */
    public StepMetrics metrics() {
        return step.metrics();
    }

    /**
     * Activation recomputation from the next forward: under {@link Recompute#FULL} every block keeps
     * only its input between forward and backward (the backward recomputes the rest), for the same
     * gradients bit for bit and less memory; an error for configs with a layer that cannot be
     * recomputed (see {@link Recompute#refusal}).
     */
    public void recompute(Recompute mode) {
        String refusal = mode.refusal(cfg);
        if (refusal != null) {
            throw new IllegalArgumentException("train.recompute: " + refusal);
        }
        blocks.forEach(b -> b.recompute(mode == Recompute.FULL));
    }

    /** Tells every layer that optimizer step {@code step} (0-based) begins: layers that redraw fixed tensors do it here. */
    public void startStep(long step) {
        headPending = false;
        for (Block b : blocks) {
            b.mixer.startStep(step);
        }
        if (deq != null) {
            deq.startStep(step);
        }
    }

    private float activeDropout(boolean train) {
        return train && step.training() ? (float) cfg.dropout() : 0f;
    }

    /** Checks a sequence length against the model's limit (max_seq), if it has one. */
    void checkLength(int len, String what) {
        if (cfg.limited() && len > cfg.maxSeq()) {
            throw new IllegalArgumentException(what + " has " + len + " tokens but the model's max_seq is " + cfg.maxSeq());
        }
    }

    /** Uploads a batch's ids, positions and offsets; checks lengths against max_seq. */
    private Seqs upload(TokenBatch batch) {
        int t = batch.size();
        for (int b = 0; b < batch.sequences(); b++) {
            checkLength(batch.cuSeqlens()[b + 1] - batch.cuSeqlens()[b], "sequence " + b);
        }
        ids.write(t).copyFrom(batch.tokens());
        Tensor pos = positions.write(t).copyFrom(batch.positions());
        Tensor cu = cuSeqlens.write(batch.cuSeqlens().length).copyFrom(batch.cuSeqlens());
        return new Seqs(cu, pos, batch.cuSeqlens().clone());
    }

    private void embed(Tensor x, Tensor tokenIds, Tensor pos, Tensor posBuffer) {
        embed(wte, wpe, x, tokenIds, pos, posBuffer);
    }

    /** x = wte[ids] (+ wpe[positions] through {@code posBuffer}, when wpe is not null). */
    static void embed(Params.Handle wte, Params.Handle wpe, Tensor x, Tensor tokenIds, Tensor pos, Tensor posBuffer) {
        Backend be = x.device().backend();
        be.embeddingForward(x, tokenIds, wte.value());
        if (wpe != null) {
            be.embeddingForward(posBuffer, pos, wpe.value());
            be.binary(BinaryOp.ADD, x, x, posBuffer);
        }
    }

    /** Runs embeddings, blocks and the final LayerNorm; returns the final hidden states [T, C]. */
    private Tensor hidden(TokenBatch batch, boolean train) {
        float p = activeDropout(train);
        seqs = upload(batch);
        int t = batch.size();
        int c = cfg.dModel();
        Tensor x = xs[0].write(t, c);
        embed(x, ids.saved(t), seqs.positions(), wpe == null ? null : posEmb.write(t, c));
        if (p > 0) {
            dev.backend().dropoutForward(x, x, p, step.seed());
        }
        for (int l = 0; l < blocks.size(); l++) {
            Tensor y = xs[l + 1].write(t, c);
            blocks.get(l).dropout(p, Seeds.derive(step.seed(), l));
            if (deq != null) {
                deq.forward(y, x, seqs);
            } else {
                blocks.get(l).forward(y, x, seqs);
            }
            x = y;
        }
        Tensor out = xf.write(t, c);
        lnf.forward(out, x);
        return out;
    }

    /** logits[T, V] = h wteᵀ: the LM head tied to the token embedding. */
    static void headForward(Params.Handle wte, GemmInput headIn, Tensor logits, Tensor h) {
        Tensor w = wte.gemmWeight();
        h.device().backend().gemm(Gemm.of(false, true, h.rows(), logits.cols(), h.cols()), logits, headIn.of(h, w), w);
    }

    /**
     * The head's backward: dh += dlogits wte, and {@code wteGrad} += dlogitsᵀ xf (the head's part of
     * the tied weight's gradient).
     */
    static void headBackward(Params.Handle wte, GemmInput headIn, GemmInput scratch, Tensor dh, Tensor dlogits, Tensor xf,
                             Tensor wteGrad) {
        int t = dlogits.rows();
        int v = dlogits.cols();
        int c = dh.cols();
        Backend be = dh.device().backend();
        Tensor w = wte.gemmWeight();
        Tensor dl = scratch.of(dlogits, w);
        be.gemm(Gemm.of(false, false, t, c, v).scaled(1f, 1f), dh, dl, w);
        be.gemm(Gemm.of(true, false, v, c, t).scaled(1f, 1f), wteGrad, dl, headIn.of(xf, w));
    }

    /** The embeddings' backward of a forward without dropout: wte and wpe gradients += from dx. */
    static void embedBackward(Params.Handle wte, Params.Handle wpe, Tensor dx, Tensor tokenIds, Tensor pos) {
        Backend be = dx.device().backend();
        be.embeddingBackward(wte.grad(), dx, tokenIds);
        if (wpe != null) {
            be.embeddingBackward(wpe.grad(), dx, pos);
        }
    }

    /** Logits [T, V] for every token of the batch (no loss): for evaluation and generation, so it leaves training mode. */
    public Tensor logits(TokenBatch batch) {
        step.eval();
        return logits(batch, false);
    }

    private Tensor logits(TokenBatch batch, boolean train) {
        Tensor h = hidden(batch, train);
        Tensor out = logits.write(batch.size(), cfg.vocab());
        headForward(wte, headIn, out, h);
        gradReady = false;
        return out;
    }

    /**
     * A decoding session over {@code sequences} sequences, each starting empty. A deep equilibrium
     * model keeps no per-layer state: its fixed point at a token depends on every earlier token's
     * fixed point, which a new token does not change (the block is causal) but which an incremental
     * state would have to re-solve with; so each step runs the full forward over the prefixes,
     * equal to {@link #logits} by construction (see {@link DecodeSession}).
     */
    public DecodeSession newSession(int sequences) {
        if (sequences < 1) {
            throw new IllegalArgumentException("a decoding session needs at least one sequence, got " + sequences);
        }
        if (deq != null) {
            return new DecodeSession(this, List.of(), sequences);
        }
        List<MixerState> states = new ArrayList<>();
        try {
            for (Block b : blocks) {
                states.add(b.mixer.newState(sequences));
            }
        } catch (RuntimeException e) {
            states.forEach(MixerState::close);
            throw e;
        }
        return new DecodeSession(this, states, sequences);
    }

    /**
     * Incremental decoding: logits [R, V] for the R new tokens of a batch of sequences, packed by
     * {@code cu} (host offsets), at {@code pos} within their sequences; the states advance past them.
     */
    Tensor forwardStep(int[] tokens, int[] pos, int[] cu, List<MixerState> states) {
        int r = tokens.length;
        int c = cfg.dModel();
        Tensor x = stepX.write(r, c);
        Tensor y = stepY.write(r, c);
        embed(x, stepIds.write(r).copyFrom(tokens), stepPositions.write(r).copyFrom(pos), wpe == null ? null : stepPosEmb.write(r, c));
        for (int l = 0; l < blocks.size(); l++) {
            blocks.get(l).forwardStep(y, x, cu, states.get(l));
            Tensor swap = x;
            x = y;
            y = swap;
        }
        Tensor out = stepXf.write(r, c);
        lnf.forwardStep(out, x);
        Tensor lg = stepLogits.write(r, cfg.vocab());
        Tensor w = wte.gemmWeight();
        dev.backend().gemm(Gemm.of(false, true, r, cfg.vocab(), c), lg, headScratch.of(out, w), w);
        return lg;
    }

    /**
     * Forward pass with next-token cross-entropy. Returns the summed loss over predicted tokens
     * (divide by {@link #predicted()} for the mean), read back from the device. With
     * {@code gradScale} > 0 the fused loss kernel also leaves dlogits = gradScale·∂(summed
     * loss)/∂logits for {@link #backward}.
     */
    public double forward(TokenBatch batch, float gradScale) {
        double sum = 0;
        for (double l : losses(batch, gradScale).toDoubleArray()) {
            sum += l;
        }
        return sum;
    }

    /**
     * {@link #forward(TokenBatch, float)} that adds the summed loss to {@code lossSum} (one F32
     * element) on the device instead of reading it back: the trainer reads a step's sums once.
     */
    public void forward(TokenBatch batch, float gradScale, Tensor lossSum) {
        dev.backend().addSum(lossSum, losses(batch, gradScale), 1f);
    }

    /** Runs the forward pass and the loss kernel; returns the per-token losses [T] (0 where ignored). */
    private Tensor losses(TokenBatch batch, float gradScale) {
        Tensor lg = logits(batch, true);
        int t = batch.size();
        int[] tg = batch.targets();
        predicted = 0;
        for (int target : tg) {
            predicted += target == TokenBatch.IGNORE ? 0 : 1;
        }
        Tensor tt = targets.write(t).copyFrom(tg);
        Tensor ls = losses.write(t);
        if (gradScale > 0) {
            dev.backend().crossEntropyForwardBackward(ls, lg, lg, tt, TokenBatch.IGNORE, gradScale);
            gradReady = true;
        } else {
            dev.backend().crossEntropyForward(ls, lg, tt, TokenBatch.IGNORE);
        }
        return ls;
    }

    /** Tokens that had a target in the last {@link #forward}. */
    public int predicted() {
        return predicted;
    }

    /** Accumulates parameter gradients (+=) for the dlogits the last {@link #forward} left. */
    public void backward() {
        backward(true, (done, ready) -> { });
    }

    /**
     * {@link #backward()} of a micro-batch that is not the step's last: the head's part of the tied
     * weight's gradient waits in a buffer of its own until the step's last backward adds it to the
     * embeddings' part. So the tied gradient is always (Σ embedding parts) + (Σ head parts), the
     * sum a pipeline forms between its first and last stage, and the two train the same bits.
     */
    public void backwardAccumulating() {
        backward(false, (done, ready) -> { });
    }

    /**
     * {@link #backward()}, telling {@code finished} about each group of parameters as soon as their
     * gradients are complete (the final LayerNorm, then the blocks last to first, then the
     * embeddings), so that a data-parallel run can send them while the rest is computed. Each group
     * comes with the fence recorded after its last kernel: on an asynchronous device the gradients
     * may be read only once it is done.
     */
    public void backward(java.util.function.BiConsumer<List<Param>, Fence> finished) {
        backward(true, finished);
    }

    private void backward(boolean completes, java.util.function.BiConsumer<List<Param>, Fence> finished) {
        if (!gradReady) {
            throw new IllegalStateException("backward needs a forward with gradScale > 0 first");
        }
        gradReady = false;
        int t = seqs.tokens();
        int c = cfg.dModel();
        int v = cfg.vocab();
        Backend be = dev.backend();
        Tensor dh = dxf.zeros(t, c);
        Tensor headGrad;
        if (completes && !headPending) {
            headGrad = wte.grad();
        } else {
            headGrad = headPending ? headGradSum.saved(v, c) : headGradSum.zeros(v, c);
            headPending = true;
        }
        headBackward(wte, headIn, headScratch, dh, logits.saved(t, v), xf.saved(t, c), headGrad);
        // Two residual-gradient buffers, used alternately: block l reads one and accumulates into the other.
        Tensor dx = dres[0].zeros(t, c);
        lnf.backward(dx, dh);
        finished.accept(backwardGroups.get(0), dev.fence());
        for (int l = blocks.size() - 1, i = 1; l >= 0; l--, i ^= 1) {
            Tensor dprev = dres[i].zeros(t, c);
            if (deq != null) {
                deq.backward(dprev, dx);
            } else {
                blocks.get(l).backward(dprev, dx, seqs);
            }
            finished.accept(backwardGroups.get(blocks.size() - l), dev.fence());
            dx = dprev;
        }
        float p = activeDropout(true);
        if (p > 0) {
            Tensor d = demb.zeros(t, c);
            be.dropoutBackward(d, dx, p, step.seed());
            dx = d;
        }
        embedBackward(wte, wpe, dx, ids.saved(t), seqs.positions());
        if (completes && headPending) {
            be.binary(BinaryOp.ADD, wte.grad(), wte.grad(), headGradSum.saved(v, c));
            headPending = false;
        }
        finished.accept(backwardGroups.get(backwardGroups.size() - 1), dev.fence());
    }

    /** Whether this is a deep equilibrium model (config key deq). */
    public boolean equilibrium() {
        return deq != null;
    }

    @Override
    public void close() {
        if (deq != null) {
            deq.close();
        }
        blocks.forEach(Block::close);
        lnf.close();
        acts.close();
        step.close();
        params.close();
    }
}
