package org.kindling.models;

import java.util.ArrayList;
import java.util.List;
import org.kindling.ops.Backend;
import org.kindling.ops.BinaryOp;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Gemm;
import org.kindling.ops.Seeds;
import org.kindling.ops.Tensor;

/**
 * A GPT-style decoder: token + learned position embeddings, pre-LayerNorm blocks (token mixer and
 * channel mixer per layer from the config), a final LayerNorm and an LM head tied to the token
 * embedding, trained with fused softmax cross-entropy. Layers run forward in order and backward in
 * reverse (llm.c); every activation lives in named, reused buffers.
 */
public final class Gpt implements AutoCloseable {
    private final ModelConfig cfg;
    private final Device dev;
    private final Params params;
    private final Params.Handle wte;
    private final Params.Handle wpe;
    private final List<Block> blocks = new ArrayList<>();
    private final LayerNorm lnf;
    private final Buffers acts;
    /** Parameters in the order the backward pass finishes with them: ln_f, blocks last to first, embeddings. */
    private final List<List<Param>> backwardGroups = new ArrayList<>();
    private Seqs seqs;
    private int predicted;
    private boolean gradReady;
    private boolean training;
    private long dropoutSeed;

    public Gpt(ModelConfig cfg, Device dev, long seed) {
        this.cfg = cfg;
        this.dev = dev;
        this.acts = new Buffers(dev, "gpt");
        int c = cfg.dModel();
        double std = cfg.initStd();
        double residualStd = std / Math.sqrt(2.0 * cfg.nLayer());
        Params.Builder pb = new Params.Builder();
        wte = pb.add("wte.weight", Params.Init.NORMAL, std, true, cfg.vocab(), c);
        wpe = pb.add("wpe.weight", Params.Init.NORMAL, std, true, cfg.maxSeq(), c);
        for (int l = 0; l < cfg.nLayer(); l++) {
            String p = "h." + l;
            LayerNorm ln1 = new LayerNorm(pb, new Buffers(dev, p + ".ln_1"), p + ".ln_1", c, cfg.layerNormEps());
            TokenMixer mixer = switch (cfg.mixers().get(l)) {
                case "attention" -> new CausalSelfAttention(pb, new Buffers(dev, p + ".attn"), p + ".attn", cfg, std, residualStd);
                default -> throw new IllegalArgumentException("unknown mixer " + cfg.mixers().get(l));
            };
            LayerNorm ln2 = new LayerNorm(pb, new Buffers(dev, p + ".ln_2"), p + ".ln_2", c, cfg.layerNormEps());
            ChannelMixer channel = switch (cfg.channelMixers().get(l)) {
                case "mlp" -> new Mlp(pb, new Buffers(dev, p + ".mlp"), p + ".mlp", c, cfg.mlpRatio(), std, residualStd);
                default -> throw new IllegalArgumentException("unknown channel mixer " + cfg.channelMixers().get(l));
            };
            blocks.add(new Block(ln1, mixer, ln2, channel, c, new Buffers(dev, p)));
        }
        lnf = new LayerNorm(pb, new Buffers(dev, "ln_f"), "ln_f", c, cfg.layerNormEps());
        params = pb.build(dev, seed);
        backwardGroups.add(withPrefix("ln_f."));
        for (int l = cfg.nLayer() - 1; l >= 0; l--) {
            backwardGroups.add(withPrefix("h." + l + "."));
        }
        backwardGroups.add(List.of(wte.get(), wpe.get()));
        if (backwardGroups.stream().mapToInt(List::size).sum() != params.list().size()) {
            throw new IllegalStateException("a parameter belongs to no backward group: " + params.list());
        }
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

    /**
     * Training mode turns dropout on in {@link #forward} (never in {@link #logits} or decoding);
     * {@code seed} draws this forward's masks, so a step's dropout is reproducible from its seed.
     */
    public void training(boolean on, long seed) {
        this.training = on;
        this.dropoutSeed = seed;
    }

    private float activeDropout(boolean train) {
        return train && training ? (float) cfg.dropout() : 0f;
    }

    /** Uploads a batch's ids, positions and offsets; checks positions against max_seq. */
    private Seqs upload(TokenBatch batch) {
        int t = batch.size();
        for (int b = 0; b < batch.sequences(); b++) {
            int len = batch.cuSeqlens()[b + 1] - batch.cuSeqlens()[b];
            if (len > cfg.maxSeq()) {
                throw new IllegalArgumentException("sequence " + b + " has " + len + " tokens but max_seq is " + cfg.maxSeq());
            }
        }
        acts.get("ids", DType.I32, t).copyFrom(batch.tokens());
        Tensor pos = acts.get("positions", DType.I32, t).copyFrom(batch.positions());
        Tensor cu = acts.get("cu_seqlens", DType.I32, batch.cuSeqlens().length).copyFrom(batch.cuSeqlens());
        return new Seqs(cu, pos, batch.cuSeqlens().clone());
    }

    /** Runs embeddings, blocks and the final LayerNorm; returns the final hidden states [T, C]. */
    private Tensor hidden(TokenBatch batch, boolean train) {
        float p = activeDropout(train);
        seqs = upload(batch);
        int t = batch.size();
        int c = cfg.dModel();
        Backend be = dev.backend();
        Tensor x = acts.f32("x0", t, c);
        Tensor posEmb = acts.f32("pos_emb", t, c);
        be.embeddingForward(x, acts.get("ids", DType.I32, t), wte.value());
        be.embeddingForward(posEmb, seqs.positions(), wpe.value());
        be.binary(BinaryOp.ADD, x, x, posEmb);
        if (p > 0) {
            be.dropoutForward(x, x, p, dropoutSeed);
        }
        for (int l = 0; l < blocks.size(); l++) {
            Tensor y = acts.f32("x" + (l + 1), t, c);
            blocks.get(l).dropout(p, Seeds.derive(dropoutSeed, l));
            blocks.get(l).forward(y, x, seqs);
            x = y;
        }
        Tensor xf = acts.f32("xf", t, c);
        lnf.forward(xf, x);
        return xf;
    }

    /** Logits [T, V] for every token of the batch (no loss): for evaluation and generation. */
    public Tensor logits(TokenBatch batch) {
        return logits(batch, false);
    }

    private Tensor logits(TokenBatch batch, boolean train) {
        Tensor xf = hidden(batch, train);
        Tensor logits = acts.f32("logits", batch.size(), cfg.vocab());
        dev.backend().gemm(Gemm.of(false, true, batch.size(), cfg.vocab(), cfg.dModel()), logits, xf, wte.value());
        gradReady = false;
        return logits;
    }

    /** Decoding states for one sequence, one per layer. */
    public List<DecodeState> newDecodeStates() {
        List<DecodeState> states = new ArrayList<>();
        for (Block b : blocks) {
            states.add(b.mixer.newState(cfg.maxSeq()));
        }
        return states;
    }

    /**
     * Incremental decoding: logits [t, V] for t new tokens of one sequence that follow what
     * {@code states} (from {@link #newDecodeStates}) have seen; the states advance past them.
     */
    public Tensor forwardStep(int[] tokens, List<DecodeState> states) {
        int t = tokens.length;
        int start = states.get(0).length();
        if (t == 0) {
            throw new IllegalArgumentException("forwardStep needs at least one token");
        }
        if (start + t > cfg.maxSeq()) {
            throw new IllegalArgumentException("sequence of " + (start + t) + " tokens exceeds max_seq " + cfg.maxSeq());
        }
        int c = cfg.dModel();
        Backend be = dev.backend();
        int[] positions = new int[t];
        for (int i = 0; i < t; i++) {
            positions[i] = start + i;
        }
        Tensor ids = acts.get("step_ids", DType.I32, t).copyFrom(tokens);
        Tensor pos = acts.get("step_positions", DType.I32, t).copyFrom(positions);
        Tensor x = acts.f32("step_x", t, c);
        Tensor y = acts.f32("step_y", t, c);
        Tensor posEmb = acts.f32("step_pos_emb", t, c);
        be.embeddingForward(x, ids, wte.value());
        be.embeddingForward(posEmb, pos, wpe.value());
        be.binary(BinaryOp.ADD, x, x, posEmb);
        for (int l = 0; l < blocks.size(); l++) {
            blocks.get(l).forwardStep(y, x, states.get(l));
            Tensor swap = x;
            x = y;
            y = swap;
        }
        Tensor xf = acts.f32("step_xf", t, c);
        lnf.forwardStep(xf, x);
        Tensor logits = acts.f32("step_logits", t, cfg.vocab());
        be.gemm(Gemm.of(false, true, t, cfg.vocab(), c), logits, xf, wte.value());
        return logits;
    }

    /**
     * Forward pass with next-token cross-entropy. Returns the summed loss over predicted tokens
     * (divide by {@link #predicted()} for the mean). With {@code gradScale} > 0 the fused loss
     * kernel also leaves dlogits = gradScale·∂(summed loss)/∂logits for {@link #backward}.
     */
    public double forward(TokenBatch batch, float gradScale) {
        Tensor logits = logits(batch, true);
        int t = batch.size();
        int[] targets = batch.targets();
        predicted = 0;
        for (int target : targets) {
            predicted += target == TokenBatch.IGNORE ? 0 : 1;
        }
        Tensor tt = acts.get("targets", DType.I32, t).copyFrom(targets);
        Tensor losses = acts.f32("losses", t);
        if (gradScale > 0) {
            dev.backend().crossEntropyForwardBackward(losses, logits, logits, tt, TokenBatch.IGNORE, gradScale);
            gradReady = true;
        } else {
            dev.backend().crossEntropyForward(losses, logits, tt, TokenBatch.IGNORE);
        }
        double sum = 0;
        for (double l : losses.toDoubleArray()) {
            sum += l;
        }
        return sum;
    }

    /** Tokens that had a target in the last {@link #forward}. */
    public int predicted() {
        return predicted;
    }

    /** Accumulates parameter gradients (+=) for the dlogits the last {@link #forward} left. */
    public void backward() {
        backward(done -> { });
    }

    /**
     * {@link #backward()}, telling {@code finished} about each group of parameters as soon as their
     * gradients are complete (the final LayerNorm, then the blocks last to first, then the
     * embeddings), so that a data-parallel run can send them while the rest is computed.
     */
    public void backward(java.util.function.Consumer<List<Param>> finished) {
        if (!gradReady) {
            throw new IllegalStateException("backward needs a forward with gradScale > 0 first");
        }
        gradReady = false;
        int t = seqs.tokens();
        int c = cfg.dModel();
        int v = cfg.vocab();
        Backend be = dev.backend();
        Tensor dlogits = acts.saved("logits", t, v);
        Tensor xf = acts.saved("xf", t, c);
        Tensor dxf = acts.zeros("dxf", t, c);
        be.gemm(Gemm.of(false, false, t, c, v).scaled(1f, 1f), dxf, dlogits, wte.value());
        be.gemm(Gemm.of(true, false, v, c, t).scaled(1f, 1f), wte.grad(), dlogits, xf);
        // Two residual-gradient buffers, used alternately: block l reads one and accumulates into the other.
        String[] names = {"dx_a", "dx_b"};
        Tensor dx = acts.zeros(names[0], t, c);
        lnf.backward(dx, dxf);
        finished.accept(backwardGroups.get(0));
        for (int l = blocks.size() - 1, i = 1; l >= 0; l--, i ^= 1) {
            Tensor dprev = acts.zeros(names[i], t, c);
            blocks.get(l).backward(dprev, dx, seqs);
            finished.accept(backwardGroups.get(blocks.size() - l));
            dx = dprev;
        }
        float p = activeDropout(true);
        if (p > 0) {
            Tensor demb = acts.zeros("demb", t, c);
            be.dropoutBackward(demb, dx, p, dropoutSeed);
            dx = demb;
        }
        be.embeddingBackward(wte.grad(), dx, acts.saved("ids", DType.I32, t));
        be.embeddingBackward(wpe.grad(), dx, seqs.positions());
        finished.accept(backwardGroups.get(backwardGroups.size() - 1));
    }

    @Override
    public void close() {
        blocks.forEach(Block::close);
        lnf.close();
        acts.close();
        params.close();
    }
}
