package org.kindling.models.channel;

import org.kindling.models.nn.Activation;
import org.kindling.models.nn.Activations;
import org.kindling.models.nn.GemmInput;
import org.kindling.models.nn.Init;
import org.kindling.models.nn.LayerContext;
import org.kindling.models.nn.Linear;
import org.kindling.models.nn.ParamGroup;
import org.kindling.models.nn.Params;
import org.kindling.models.nn.StepContext;
import org.kindling.ops.Backend;
import org.kindling.ops.BinaryOp;
import org.kindling.ops.Gemm;
import org.kindling.ops.Noise;
import org.kindling.ops.Seeds;
import org.kindling.ops.Tensor;
import org.kindling.ops.UnaryOp;

/**
 * Scaling Transformers' sparse FFN (see {@link SparseFfnSpec}): with F = d_ff hidden units in
 * B = F/N blocks of N, y = (ReLU(x·W1ᵀ + b1) ⊙ mask)·W2 + b2, W1 [F, C], W2 [F, C] (hidden units
 * as rows, so decoding gathers rows of both), and the mask [T, F] one unit per block from a
 * low-rank controller: logits = (x·Dᵀ)·Uᵀ + bu, D [rank, C], U [F, rank], seen as [T·B, N].
 *
 * <p>Training follows trax's {@code SparseFF} (Gumbel straight-through): soft = softmax(logits)
 * per block. On a quantised pass (a share {@code quantize} of them, decided from the pass's seed,
 * so a resumed run repeats it) the forward multiplies by the one-hot of each block's
 * argmax(logits + τ·g), Gumbel noise g from the same seed scaled by the temperature τ, and the
 * backward takes the soft values' gradient; otherwise the mask is the soft values, so such a pass
 * trains every unit, weighted by its probability. Unlike trax, which masks before the ReLU, the
 * mask multiplies ReLU's output: equal in the forward (the mask is positive), and on quantised
 * passes every unit's controller logit gets a gradient, not only the chosen one's. Evaluation and
 * decoding take the argmax of the logits, without noise; a backward after an evaluation forward
 * gives the controller no gradient (the argmax has none). With N = 1 the mask is all ones: a dense
 * ReLU FFN.
 */
final class SparseFfn implements ChannelMixer {
    /** Separate the Gumbel noise and the quantise draw from other draws of the same layer and pass. */
    private static final long NOISE_STREAM = 0x6ab3e1L;
    private static final long QUANTIZE_STREAM = 0x9a17c5L;
    /** Gumbel's uniform draws stay inside (0, 1), as trax's, so −log(−log u) is finite. */
    private static final float U_LO = 1e-6f;
    private static final float U_HI = 1 - 1e-6f;

    private final int c;
    private final int dFf;
    private final int n;
    private final int blocks;
    private final int rank;
    private final float temperature;
    private final double quantize;
    private final int layer;
    private final StepContext step;
    final Linear fc;
    /** W2 [F, C] and b2 [C]. */
    final Params.Handle proj;
    final Params.Handle projBias;
    final Linear down;
    final Linear up;
    /** The proj GEMM's operands in W2's type: the masked hidden state (re-rounded in backward, like Moe) and dy; decoding's own. */
    private final GemmInput maskedIn;
    private final GemmInput dyIn;
    private final GemmInput stepIn;
    private final Activations acts;
    /** Saved by a forward: h = x·W1ᵀ + b1 and ReLU(h) [T, F]; controller hidden [T, rank]. */
    private final Activation h;
    private final Activation relu;
    private final Activation ctrl;
    /** Forward scratch, shared by the layers since backward needs neither: logits [T, F] and the noisy scores [T, F]. */
    private final Activation logits;
    private final Activation noise;
    /** Training: the controller's softmax per block [T, F]. */
    private final Activation soft;
    /** A one-hot mask [T, F], from each block's argmax [T·B, 1] (its value and its unit in the block) and ones [T·B, 1]. */
    private final Activation hard;
    private final Activation choiceValues;
    private final Activation choice;
    private final Activation ones;
    /** ReLU(h) ⊙ mask [T, F], proj's input. */
    private final Activation masked;
    /** Backward scratch: ∂L/∂masked, ∂L/∂ReLU, ∂L/∂h, ∂L/∂mask, ∂L/∂logits [T, F]; ∂L/∂(controller hidden) [T, rank]. */
    private final Activation dm;
    private final Activation dr;
    private final Activation dh;
    private final Activation dmask;
    private final Activation dlogits;
    private final Activation dctrl;
    /** Decoding's own buffers, so a pending backward stays intact (see {@link #forwardStep}). */
    private final Activation stepCtrl;
    private final Activation stepLogits;
    private final Activation stepHard;
    private final Activation stepChoiceValues;
    private final Activation stepChoice;
    private final Activation stepOnes;
    private final Activation stepSelValues;
    private final Activation stepSel;
    private final Activation stepW1;
    private final Activation stepB1;
    private final Activation stepU;
    private final Activation stepW2;
    private final Activation stepH;
    /** What the last forward did, for its backward: trained (noise and soft values), and multiplied by the one-hot. */
    private boolean trained;
    private boolean quantised;

    SparseFfn(LayerContext ctx, SparseFfnSpec spec) {
        this.c = ctx.dModel();
        this.dFf = spec.dFf();
        this.n = spec.block();
        this.blocks = spec.blocks();
        this.rank = spec.controllerRank();
        this.temperature = (float) spec.temperature();
        this.quantize = spec.quantize();
        this.layer = ctx.layer();
        this.step = ctx.step();
        Params.Builder pb = ctx.params();
        this.fc = new Linear(pb, ctx.child("fc"), c, dFf, true, ctx.initStd());
        this.proj = pb.add(ctx.child("proj.weight_t"), Init.normal(ctx.residualStd()), ParamGroup.DECAY, dFf, c);
        this.projBias = pb.add(ctx.child("proj.bias"), Init.zeros(), ParamGroup.NO_DECAY, c);
        this.down = new Linear(pb, ctx.child("controller.down"), c, rank, false, ctx.initStd());
        this.up = new Linear(pb, ctx.child("controller.up"), rank, dFf, true, ctx.initStd());
        this.maskedIn = pb.gemmInput(ctx.child("proj.x"));
        this.dyIn = pb.gemmInput(ctx.child("proj.dy"));
        this.stepIn = pb.gemmInput(ctx.child("proj.step_x"));
        this.acts = new Activations(ctx.device(), ctx.name(), ctx.step().workspace());
        h = acts.f32("h");
        relu = acts.f32("relu");
        ctrl = acts.f32("ctrl");
        logits = acts.scratch("sffn.logits");
        noise = acts.scratch("sffn.noise");
        soft = acts.f32("soft");
        hard = acts.f32("hard");
        choiceValues = acts.f32("choice_values");
        choice = acts.i32("choice");
        ones = acts.f32("ones");
        masked = acts.f32("masked");
        dm = acts.scratch("sffn.dm");
        dr = acts.scratch("sffn.dr");
        dh = acts.scratch("sffn.dh");
        dmask = acts.scratch("sffn.dmask");
        dlogits = acts.scratch("sffn.dlogits");
        dctrl = acts.scratch("sffn.dctrl");
        stepCtrl = acts.scratch("sffn.step_ctrl");
        stepLogits = acts.scratch("sffn.step_logits");
        stepHard = acts.scratch("sffn.step_hard");
        stepChoiceValues = acts.scratch("sffn.step_choice_values");
        stepChoice = acts.i32("step_choice");
        stepOnes = acts.scratch("sffn.step_ones");
        stepSelValues = acts.scratch("sffn.step_sel_values");
        stepSel = acts.i32("step_sel");
        stepW1 = acts.scratch("sffn.step_w1");
        stepB1 = acts.scratch("sffn.step_b1");
        stepU = acts.scratch("sffn.step_u");
        stepW2 = acts.scratch("sffn.step_w2");
        stepH = acts.scratch("sffn.step_h");
    }

    /** Whether a training pass with this seed multiplies by the one-hot: a pure function of the seed and the layer. */
    static boolean quantisedPass(long seed, int layer, double quantize) {
        return Noise.uniform(Seeds.derive(seed, layer, QUANTIZE_STREAM), 0, 0f, 1f) < quantize;
    }

    @Override
    public void forward(Tensor y, Tensor x) {
        Backend be = x.device().backend();
        int t = x.rows();
        Tensor th = h.write(t, dFf);
        fc.forward(th, x);
        Tensor r = relu.write(t, dFf);
        be.unary(UnaryOp.RELU, r, th);
        Tensor lg = controller(logits.write(t, dFf), ctrl.write(t, rank), x, false);
        trained = step.training();
        Tensor mask;
        if (trained) {
            Tensor s = soft.write(t, dFf);
            be.softmaxForward(s.reshape(t * blocks, n), lg.reshape(t * blocks, n));
            quantised = quantisedPass(step.seed(), layer, quantize);
            if (quantised) {
                Tensor g = noise.write(t, dFf);
                be.uniformNoise(g, U_LO, U_HI, Seeds.derive(step.seed(), layer, NOISE_STREAM));
                // g = log(−log u) = −Gumbel, so logits + τ·Gumbel = logits − τ·g.
                be.unary(UnaryOp.LOG, g, g);
                be.unary(UnaryOp.NEG, g, g);
                be.unary(UnaryOp.LOG, g, g);
                be.affine(g, g, -temperature, 0f);
                be.binary(BinaryOp.ADD, g, lg, g);
                mask = oneHot(hard, choiceValues, choice, ones, g);
            } else {
                mask = s;
            }
        } else {
            quantised = true;
            mask = oneHot(hard, choiceValues, choice, ones, lg);
        }
        Tensor m = masked.write(t, dFf);
        be.binary(BinaryOp.MUL, m, r, mask);
        Tensor w2 = proj.gemmWeight();
        be.gemm(Gemm.of(false, false, t, c, dFf), y, maskedIn.of(m, w2), w2);
        be.binary(BinaryOp.ADD, y, y, projBias.value());
    }

    /** logits [T, F] = (x·Dᵀ)·Uᵀ + bu through hidden [T, rank]; {@code decoding}: without keeping x for backward. */
    private Tensor controller(Tensor lg, Tensor hidden, Tensor x, boolean decoding) {
        if (decoding) {
            down.apply(hidden, x);
            up.apply(lg, hidden);
        } else {
            down.forward(hidden, x);
            up.forward(lg, hidden);
        }
        return lg;
    }

    /** The one-hot [T, F] of each block's largest score in scores [T, F] (ties: the lower unit), into {@code out}. */
    private Tensor oneHot(Activation out, Activation values, Activation indices, Activation one, Tensor scores) {
        Backend be = scores.device().backend();
        int t = scores.rows();
        int rows = t * blocks;
        Tensor v = values.write(rows, 1);
        Tensor idx = indices.write(rows, 1);
        be.topK(v, idx, scores.reshape(rows, n), 1);
        Tensor o = one.write(rows, 1);
        be.fill(o, 1f);
        Tensor mask = out.zeros(t, dFf);
        be.topKBackward(mask.reshape(rows, n), o, idx);
        return mask;
    }

    /**
     * Decoding: the argmax mask like an evaluation forward. Fewer rows than N gather, per row, the
     * B chosen units' rows of W1, b1 and W2 and multiply only those (d_ff/N of each weight's rows
     * read per token); at N rows or more one masked dense pass reads less than that. The gather
     * reads the fp32 master weights (rows of a bf16 shadow would need a bf16 GEMM of one row).
     */
    @Override
    public void forwardStep(Tensor y, Tensor x) {
        Backend be = x.device().backend();
        int t = x.rows();
        Tensor lg = controller(stepLogits.write(t, dFf), stepCtrl.write(t, rank), x, true);
        Tensor mask = oneHot(stepHard, stepChoiceValues, stepChoice, stepOnes, lg);
        if (t >= n) {
            Tensor th = stepH.write(t, dFf);
            fc.apply(th, x);
            be.unary(UnaryOp.RELU, th, th);
            be.binary(BinaryOp.MUL, th, th, mask);
            Tensor w2 = proj.gemmWeight();
            be.gemm(Gemm.of(false, false, t, c, dFf), y, stepIn.of(th, w2), w2);
            be.binary(BinaryOp.ADD, y, y, projBias.value());
            return;
        }
        // The B ones of each row in unit order (equal scores keep index order): the global units chosen.
        Tensor selValues = stepSelValues.write(t, blocks);
        Tensor sel = stepSel.write(t, blocks);
        be.topK(selValues, sel, mask, blocks);
        Tensor units = sel.reshape(t * blocks);
        Tensor w1 = stepW1.write(t * blocks, c);
        be.gatherRows(w1, fc.weight.value(), units);
        Tensor b1 = stepB1.write(t * blocks, 1);
        be.gatherRows(b1, fc.bias.value().reshape(dFf, 1), units);
        // Row i: u_i [1, B] = x_i·(its W1 rows)ᵀ + its b1, then ReLU.
        Tensor u = stepU.write(t, blocks);
        be.gemm(Gemm.of(false, true, 1, blocks, c).strided(t, c, (long) blocks * c, blocks), u, x, w1);
        be.binary(BinaryOp.ADD, u, u, b1.reshape(t, blocks));
        be.unary(UnaryOp.RELU, u, u);
        Tensor w2 = stepW2.write(t * blocks, c);
        be.gatherRows(w2, proj.value(), units);
        be.gemm(Gemm.of(false, false, 1, c, blocks).strided(t, blocks, (long) blocks * c, c), y, u, w2);
        be.binary(BinaryOp.ADD, y, y, projBias.value());
    }

    @Override
    public void backward(Tensor dx, Tensor dy) {
        Backend be = dy.device().backend();
        int t = dy.rows();
        Tensor w2 = proj.gemmWeight();
        Tensor dyg = dyIn.of(dy, w2);
        Tensor dmt = dm.write(t, dFf);
        be.gemm(Gemm.of(false, true, t, dFf, c), dmt, dyg, w2);
        be.gemm(Gemm.of(true, false, dFf, c, t).scaled(1f, 1f), proj.grad(), maskedIn.of(masked.saved(t, dFf), w2), dyg);
        be.addColumnSums(projBias.grad(), dy);
        Tensor r = relu.saved(t, dFf);
        Tensor mask = quantised ? hard.saved(t, dFf) : soft.saved(t, dFf);
        Tensor drt = dr.write(t, dFf);
        be.binary(BinaryOp.MUL, drt, dmt, mask);
        Tensor dht = dh.zeros(t, dFf);
        be.unaryBackward(UnaryOp.RELU, dht, drt, h.saved(t, dFf));
        fc.backward(dx, dht);
        if (!trained) {
            return;
        }
        // Straight-through: the soft values' gradient, whichever mask the forward multiplied by.
        Tensor dmk = dmask.write(t, dFf);
        be.binary(BinaryOp.MUL, dmk, dmt, r);
        Tensor dz = dlogits.zeros(t, dFf);
        int rows = t * blocks;
        be.softmaxBackward(dz.reshape(rows, n), dmk.reshape(rows, n), soft.saved(t, dFf).reshape(rows, n));
        Tensor dc = dctrl.zeros(t, rank);
        up.backward(dc, dz);
        down.backward(dx, dc);
    }

    @Override
    public void close() {
        acts.close();
    }
}
