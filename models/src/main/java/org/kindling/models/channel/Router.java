package org.kindling.models.channel;

import org.kindling.models.nn.Activation;
import org.kindling.models.nn.Activations;
import org.kindling.models.nn.LayerContext;
import org.kindling.models.nn.Linear;
import org.kindling.models.nn.StepContext;
import org.kindling.models.nn.StepMetrics;
import org.kindling.ops.Backend;
import org.kindling.ops.BinaryOp;
import org.kindling.ops.ReduceOp;
import org.kindling.ops.Seeds;
import org.kindling.ops.Tensor;

/**
 * A mixture's router (Switch Transformer): logits = x·Wᵀ with W [E, C], probabilities by a softmax
 * in fp32 (Switch's selective precision), and each token's k most probable experts. While training
 * it adds the auxiliary losses to the gradients and reports them: Switch's load-balancing loss
 * α·E·Σᵢ fᵢ·Pᵢ (fᵢ the fraction of routed entries expert i receives, Pᵢ its mean probability) and
 * the z-loss β·mean(logsumexp(logits)²). Both are token means over the step's global batch: f
 * counts the entries of every worker (summed in the forward pass), and each token weighs
 * {@link StepContext#tokenWeight}, so splitting a batch into workers or micro-batches of equal
 * routing changes neither. Optional jitter multiplies the router's input by U(1−ε, 1+ε) noise
 * drawn from the micro-batch's seed, so a resumed run redraws it.
 */
final class Router {
    /** Separates the jitter's seed from other draws of the same layer and micro-batch. */
    private static final long JITTER_STREAM = 0x6a17e4L;

    final int experts;
    final int k;
    private final int c;
    private final Linear proj;
    private final double balanceLoss;
    private final double zLoss;
    private final float jitter;
    private final StepContext step;
    private final int layer;
    private final Pass train;
    private final Pass decode;
    /** Backward scratch: ∂L/∂probs, ∂L/∂logits and the z-loss term [T, E], its per-token scale [T]; the balance gradient row [E] (written by forward); ∂L/∂(jittered x) [T, C]. */
    private final Activation dprobs;
    private final Activation dlogits;
    private final Activation dz;
    private final Activation zScale;
    private final Activation balanceRow;
    private final Activation dxr;
    /** Set by a training forward for its backward: the global fraction fᵢ of entries per expert [E] and the token weight. */
    private double[] fractions;
    private double tokenWeight;
    /** Whether the training forward multiplied the input by noise. */
    private boolean jittered;

    /** One pass's buffers: training keeps them for backward, decoding has its own. */
    private static final class Pass {
        /** The router's input, jittered while training, and its noise [T, C]. */
        final Activation xr;
        final Activation noise;
        /** logits, probs [T, E]; the chosen probabilities [T, k] F32 and experts [T, k] I32; per-token logsumexp [T]. */
        final Activation logits;
        final Activation probs;
        final Activation values;
        final Activation indices;
        final Activation lse;
        /** The exclusive prefix sum of the experts' entry counts [E + 1] I32; Σ_t probs [E]. */
        final Activation offsets;
        final Activation probSums;

        Pass(Activations acts, String prefix) {
            xr = acts.f32(prefix + "xr");
            noise = acts.f32(prefix + "noise");
            logits = acts.f32(prefix + "logits");
            probs = acts.f32(prefix + "probs");
            values = acts.f32(prefix + "values");
            indices = acts.i32(prefix + "indices");
            lse = acts.f32(prefix + "lse");
            offsets = acts.i32(prefix + "offsets");
            probSums = acts.f32(prefix + "prob_sums");
        }
    }

    /**
     * What the router decided for T tokens.
     *
     * @param values each token's chosen probabilities [T, k], the weights of its experts' outputs
     * @param indices its experts [T, k], most probable first
     * @param offsets where each expert's entries start once grouped [E + 1]
     * @param counts this worker's entries per expert [E] (host), or null when decoding
     */
    record Routing(Tensor values, Tensor indices, Tensor offsets, int[] counts) {
    }

    Router(LayerContext ctx, Activations acts, MoeSpec spec) {
        this.experts = spec.experts();
        this.k = spec.k();
        this.c = ctx.dModel();
        this.proj = new Linear(ctx.params(), ctx.child("router"), c, experts, false, ctx.initStd());
        this.balanceLoss = spec.balanceLoss();
        this.zLoss = spec.zLoss();
        this.jitter = (float) spec.jitter();
        this.step = ctx.step();
        this.layer = ctx.layer();
        train = new Pass(acts, "router_");
        decode = new Pass(acts, "router_step_");
        dprobs = acts.scratch("router.dprobs");
        dlogits = acts.scratch("router.dlogits");
        dz = acts.scratch("router.dz");
        zScale = acts.scratch("router.z_scale");
        balanceRow = acts.f32("router_balance_row");
        dxr = acts.scratch("router.dxr");
    }

    /** Routes x [T, C] and, in a training pass, sums the routing over the workers and reports the auxiliary losses. */
    Routing forward(Tensor x) {
        Pass p = train;
        Backend be = x.device().backend();
        int t = x.rows();
        Tensor xr = x;
        jittered = step.training() && jitter > 0;
        if (jittered) {
            Tensor noise = p.noise.write(t, c);
            be.uniformNoise(noise, 1 - jitter, 1 + jitter, Seeds.derive(step.seed(), layer, JITTER_STREAM));
            xr = p.xr.write(t, c);
            be.binary(BinaryOp.MUL, xr, x, noise);
        }
        Tensor logits = p.logits.write(t, experts);
        proj.forward(logits, xr);
        Routing r = route(p, logits, t);
        fractions = null;
        tokenWeight = step.tokenWeight();
        if (step.training()) {
            // The ring sums on the host: this layer's one exchange per micro-batch (E + 1 numbers).
            int[] counts = r.offsets().toIntArray();
            int[] local = new int[experts];
            double[] global = new double[experts + 1];
            for (int e = 0; e < experts; e++) {
                local[e] = counts[e + 1] - counts[e];
                global[e] = local[e];
            }
            global[experts] = t;
            step.allReduceSum(global);
            fractions = new double[experts];
            double max = 0;
            for (int e = 0; e < experts; e++) {
                fractions[e] = global[e] / (global[experts] * k);
                max = Math.max(max, fractions[e]);
            }
            report(p, t, max * experts);
            return new Routing(r.values(), r.indices(), r.offsets(), local);
        }
        return r;
    }

    /** Routes new tokens x [R, C] during decoding: no jitter, no statistics, nothing kept for backward. */
    Routing forwardStep(Tensor x) {
        int t = x.rows();
        Tensor logits = decode.logits.write(t, experts);
        proj.apply(logits, x);
        return route(decode, logits, t);
    }

    private Routing route(Pass p, Tensor logits, int t) {
        Backend be = logits.device().backend();
        Tensor probs = p.probs.write(t, experts);
        be.softmaxForward(probs, logits);
        Tensor values = p.values.write(t, k);
        Tensor indices = p.indices.write(t, k);
        be.topK(values, indices, probs, k);
        Tensor offsets = p.offsets.write(experts + 1);
        be.expertOffsets(offsets, indices.reshape(t * k), experts);
        return new Routing(values, indices, offsets, null);
    }

    Tensor weight() {
        return proj.weight.value();
    }

    /** The training forward's expert offsets [E + 1], for the backward pass's grouping. */
    Tensor savedOffsets() {
        return train.offsets.saved(experts + 1);
    }

    /**
     * The step's auxiliary losses as this worker's shares, summed on the device, and the load
     * imbalance (max load / mean load). Leaves the balance loss's gradient row α·E·fᵢ·w [E] for backward.
     */
    private void report(Pass p, int t, double imbalance) {
        Tensor probs = p.probs.saved(t, experts);
        Backend be = probs.device().backend();
        StepMetrics m = step.metrics();
        Tensor lse = p.lse.write(t);
        be.reduceRows(ReduceOp.LOG_SUM_EXP, lse, p.logits.saved(t, experts));
        be.addSumOfSquares(m.deviceSum(MoeSpec.Z_LOSS, probs.device()), lse, (float) (zLoss * tokenWeight));
        // α·E·Σᵢ fᵢ·Pᵢ·w = Σᵢ (α·E·fᵢ·w)·Σ_t probs[t, i]: the gradient row dotted with the column sums.
        float[] row = new float[experts];
        for (int e = 0; e < experts; e++) {
            row[e] = (float) (balanceLoss * experts * fractions[e] * tokenWeight);
        }
        Tensor gradRow = balanceRow.write(experts).copyFrom(row);
        Tensor sums = p.probSums.zeros(experts);
        be.addColumnSums(sums, probs);
        be.binary(BinaryOp.MUL, sums, sums, gradRow);
        be.addSum(m.deviceSum(MoeSpec.BALANCE_LOSS, probs.device()), sums, 1f);
        m.ratio(MoeSpec.LOAD_IMBALANCE, imbalance * t, t);
    }

    /**
     * dx += ∂L/∂x through the router for the upstream gradient of the chosen probabilities
     * dvalues [T, k], plus the auxiliary losses' gradients when the forward trained.
     */
    void backward(Tensor dx, Tensor dvalues) {
        int t = dvalues.rows();
        Pass p = train;
        Backend be = dx.device().backend();
        Tensor probs = p.probs.saved(t, experts);
        Tensor dp = dprobs.zeros(t, experts);
        be.topKBackward(dp, dvalues, p.indices.saved(t, k));
        if (fractions != null && balanceLoss > 0) {
            // ∂(α·E·Σᵢ fᵢ·Pᵢ)/∂probs[t, i] = α·E·fᵢ per token weight, with f constant (it counts argmax choices).
            be.binary(BinaryOp.ADD, dp, dp, balanceRow.saved(experts));
        }
        Tensor dl = dlogits.zeros(t, experts);
        be.softmaxBackward(dl, dp, probs);
        if (fractions != null && zLoss > 0) {
            // ∂(β·w·Σ_t lse_t²)/∂logits[t] = 2β·w·lse_t·probs[t].
            Tensor lse = p.lse.saved(t);
            Tensor z = dz.write(t, experts);
            Tensor scale = zScale.write(t);
            be.affine(scale, lse, (float) (2 * zLoss * tokenWeight), 0f);
            be.scaleRows(z, probs, scale);
            be.binary(BinaryOp.ADD, dl, dl, z);
        }
        if (jittered) {
            Tensor d = dxr.zeros(t, c);
            proj.backward(d, dl);
            be.binary(BinaryOp.MUL, d, d, p.noise.saved(t, c));
            be.binary(BinaryOp.ADD, dx, dx, d);
        } else {
            proj.backward(dx, dl);
        }
    }
}
