package org.kindling.models.channel;

import org.kindling.models.nn.Activation;
import org.kindling.models.nn.Activations;
import org.kindling.models.nn.GemmInput;
import org.kindling.models.nn.Init;
import org.kindling.models.nn.LayerContext;
import org.kindling.models.nn.ParamGroup;
import org.kindling.models.nn.Params;
import org.kindling.models.nn.StepContext;
import org.kindling.ops.Backend;
import org.kindling.ops.BinaryOp;
import org.kindling.ops.Gemm;
import org.kindling.ops.ReduceOp;
import org.kindling.ops.Tensor;

/**
 * A mixture of E GELU-MLP experts, expert e computing proj_e(GELU(fc_e(x))) without biases
 * (Switch, MegaBlocks), y[t] = Σ over token t's k routed experts of probability·expert(x[t]).
 *
 * <p>The T·k (token, choice) entries are grouped by expert with a stable permutation, so each
 * expert's tokens are contiguous rows, and each of the two projections is one grouped GEMM over the
 * experts' variable-size groups. Dropless (MegaBlocks): one row per entry, none padded and none
 * dropped. With a capacity factor (Switch): each expert owns ⌈factor·T·k/E⌉ slots, filled by its
 * first entries in token order; the entries past them are dropped (they add nothing, so the block's
 * residual carries the token) and empty slots are computed as zero rows, which is the padding
 * that makes capacity cost what it does. Capacity applies to training passes only: evaluation and
 * decoding compute every entry, so a token's output never depends on the other tokens of its
 * batch. The backward pass runs the same grouping in reverse.
 */
final class Moe implements ChannelMixer {
    private final MoeSpec spec;
    private final int c;
    private final int hidden;
    private final int experts;
    private final int k;
    private final Router router;
    /** fc weights [E, H, C] and proj weights [E, C, H]: one nn.Linear layout per expert. */
    final Params.Handle fc;
    final Params.Handle proj;
    private final StepContext step;
    private final Activations acts;
    private final Pass train;
    private final Pass decode;
    /** Backward scratch: ∂L/∂(slot outputs), their product with the outputs [S, C]; ∂L/∂weights [S]; ∂L/∂GELU, ∂L/∂h [S, H]; ∂L/∂(slot inputs) [S, C]; ∂L/∂values [T, k]. */
    private final Activation dyp;
    private final Activation prod;
    private final Activation dw;
    private final Activation dg;
    private final Activation dh;
    private final Activation dxp;
    private final Activation dvalues;
    /**
     * The experts' GEMM operands in their weights' type (bf16 under precision bf16): slot inputs
     * and GELU outputs, ∂L/∂(slot outputs) and ∂L/∂h. Backward rounds the pass's saved fp32
     * activations again, so a decoding step between forward and backward cannot disturb it.
     */
    private final GemmInput xpIn;
    private final GemmInput gIn;
    private final GemmInput dIn;
    private final GemmInput dhIn;

    /**
     * One pass's buffers (training keeps them for backward; decoding has its own). S is the number
     * of rows the experts compute: T·k dropless, E·capacity with a capacity.
     */
    private static final class Pass {
        /** The grouping permutation [T·k]; each row's entry (−1: an empty slot) and token [S] I32; the experts' row offsets [E + 1] I32. */
        final Activation order;
        final Activation slots;
        final Activation rows;
        final Activation groups;
        /** Gathered inputs [S, C], fc outputs and GELU [S, H], expert outputs [S, C], router weights [S, 1]. */
        final Activation xp;
        final Activation h;
        final Activation g;
        final Activation yp;
        final Activation w;
        int slotCount;
        /** Whether the pass ran under a capacity (slots) or dropless (the permutation itself). */
        boolean capped;

        Pass(Activations acts, String prefix) {
            order = acts.i32(prefix + "order");
            slots = acts.i32(prefix + "slots");
            rows = acts.i32(prefix + "rows");
            groups = acts.i32(prefix + "groups");
            xp = acts.f32(prefix + "xp");
            h = acts.f32(prefix + "h");
            g = acts.f32(prefix + "gelu");
            yp = acts.f32(prefix + "yp");
            w = acts.f32(prefix + "w");
        }
    }

    Moe(LayerContext ctx, MoeSpec spec) {
        this.spec = spec;
        this.c = ctx.dModel();
        this.hidden = spec.hidden();
        this.experts = spec.experts();
        this.k = spec.k();
        this.step = ctx.step();
        this.acts = new Activations(ctx.device(), ctx.name(), ctx.step().workspace());
        this.router = new Router(ctx, acts, spec);
        this.fc = ctx.params().add(ctx.child("experts.fc.weight"), Init.normal(ctx.initStd()), ParamGroup.DECAY, experts, hidden, c);
        this.proj = ctx.params().add(ctx.child("experts.proj.weight"), Init.normal(ctx.residualStd()), ParamGroup.DECAY, experts, c,
                hidden);
        this.xpIn = ctx.params().gemmInput(ctx.child("experts.x"));
        this.gIn = ctx.params().gemmInput(ctx.child("experts.gelu"));
        this.dIn = ctx.params().gemmInput(ctx.child("experts.dy"));
        this.dhIn = ctx.params().gemmInput(ctx.child("experts.dh"));
        train = new Pass(acts, "");
        decode = new Pass(acts, "step_");
        dyp = acts.scratch("moe.dyp");
        prod = acts.scratch("moe.prod");
        dw = acts.scratch("moe.dw");
        dg = acts.scratch("moe.dgelu");
        dh = acts.scratch("moe.dh");
        dxp = acts.scratch("moe.dxp");
        dvalues = acts.scratch("moe.dvalues");
    }

    /** The router's weight [E, C]. */
    Tensor routerWeight() {
        return router.weight();
    }

    /** Slots per expert under a capacity: ⌈factor·T·k/E⌉, at least 1. */
    static int capacity(double factor, int tokens, int k, int experts) {
        return (int) Math.max(1, Math.ceil(factor * tokens * k / experts));
    }

    @Override
    public void forward(Tensor y, Tensor x) {
        Router.Routing r = router.forward(x);
        run(train, y, x, r, !spec.dropless() && step.training());
        if (step.training()) {
            int dropped = 0;
            if (train.capped) {
                int cap = capacity(spec.capacityFactor(), x.rows(), k, experts);
                for (int n : r.counts()) {
                    dropped += Math.max(0, n - cap);
                }
            }
            step.metrics().ratio(MoeSpec.DROPPED_FRACTION, dropped, (double) x.rows() * k);
        }
    }

    @Override
    public void forwardStep(Tensor y, Tensor x) {
        run(decode, y, x, router.forwardStep(x), false);
    }

    /** Groups the entries, runs the experts on their rows and sums their outputs back, weighted. */
    private void run(Pass p, Tensor y, Tensor x, Router.Routing r, boolean capped) {
        Backend be = x.device().backend();
        int t = x.rows();
        int n = t * k;
        Tensor order = p.order.write(n);
        be.permutation(order, r.indices().reshape(n), r.offsets());
        Tensor slots;
        Tensor groups;
        p.capped = capped;
        if (!capped) {
            slots = order;
            groups = r.offsets();
        } else {
            int cap = capacity(spec.capacityFactor(), t, k, experts);
            slots = p.slots.write(experts * cap);
            be.capacitySlots(slots, order, r.offsets(), cap);
            int[] uniform = new int[experts + 1];
            for (int e = 0; e <= experts; e++) {
                uniform[e] = e * cap;
            }
            groups = p.groups.write(experts + 1).copyFrom(uniform);
        }
        int s = slots.numel();
        p.slotCount = s;
        Tensor rows = p.rows.write(s);
        be.entryTokens(rows, slots, k);
        Tensor xp = p.xp.write(s, c);
        be.gatherRows(xp, x, rows);
        Tensor h = p.h.write(s, hidden);
        Tensor fcW = fc.gemmWeight();
        be.groupedGemm(Gemm.of(false, true, s, hidden, c), h, xpIn.of(xp, fcW), fcW, groups);
        Tensor g = p.g.write(s, hidden);
        be.geluForward(g, h);
        Tensor yp = p.yp.write(s, c);
        Tensor projW = proj.gemmWeight();
        be.groupedGemm(Gemm.of(false, true, s, c, hidden), yp, gIn.of(g, projW), projW, groups);
        Tensor w = p.w.write(s, 1);
        be.gatherRows(w, r.values().reshape(n, 1), slots);
        be.fill(y, 0f);
        be.scatterAddRows(y, yp, rows, w.reshape(s));
    }

    @Override
    public void backward(Tensor dx, Tensor dy) {
        Backend be = dy.device().backend();
        int t = dy.rows();
        int n = t * k;
        Pass p = train;
        int s = p.slotCount;
        Tensor rows = p.rows.saved(s);
        Tensor slots = p.capped ? p.slots.saved(s) : p.order.saved(n);
        Tensor groups = p.capped ? p.groups.saved(experts + 1) : router.savedOffsets();
        Tensor d = dyp.write(s, c);
        be.gatherRows(d, dy, rows);
        // ∂L/∂w[s] = ⟨dy[row], expert output⟩; then the experts see dy weighted by w.
        Tensor pr = prod.write(s, c);
        be.binary(BinaryOp.MUL, pr, d, p.yp.saved(s, c));
        Tensor dws = dw.write(s, 1);
        be.reduceRows(ReduceOp.SUM, dws.reshape(s), pr);
        be.scaleRows(d, d, p.w.saved(s, 1).reshape(s));
        Tensor dgs = dg.write(s, hidden);
        Tensor projW = proj.gemmWeight();
        Tensor dg16 = dIn.of(d, projW);
        be.groupedGemm(Gemm.of(false, false, s, hidden, c), dgs, dg16, projW, groups);
        be.groupedGemm(Gemm.of(true, false, c, hidden, s).scaled(1f, 1f), proj.grad(), dg16, gIn.of(p.g.saved(s, hidden), projW),
                groups);
        Tensor dhs = dh.zeros(s, hidden);
        be.geluBackward(dhs, dgs, p.h.saved(s, hidden));
        Tensor dxs = dxp.write(s, c);
        Tensor fcW = fc.gemmWeight();
        Tensor dh16 = dhIn.of(dhs, fcW);
        be.groupedGemm(Gemm.of(false, false, s, c, hidden), dxs, dh16, fcW, groups);
        be.groupedGemm(Gemm.of(true, false, hidden, c, s).scaled(1f, 1f), fc.grad(), dh16, xpIn.of(p.xp.saved(s, c), fcW), groups);
        be.scatterAddRows(dx, dxs, rows, null);
        Tensor dv = dvalues.zeros(t, k);
        be.scatterAddRows(dv.reshape(n, 1), dws, slots, null);
        router.backward(dx, dv);
    }

    @Override
    public void close() {
        acts.close();
    }
}
