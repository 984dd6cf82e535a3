package org.kindling.models;

import org.kindling.models.config.DeqConfig;
import org.kindling.models.deq.FixedPointSolver;
import org.kindling.models.nn.Activation;
import org.kindling.models.nn.Activations;
import org.kindling.models.nn.Params;
import org.kindling.models.nn.Seqs;
import org.kindling.models.nn.StepContext;
import org.kindling.ops.Backend;
import org.kindling.ops.BinaryOp;
import org.kindling.ops.Tensor;

/**
 * A deep equilibrium layer (Bai et al. 2019): one weight-tied {@link Block} solved to its fixed
 * point z* = f(z*; x) for the embeddings x, where
 *
 * <pre>f(z; x) = x + r(z),   r(z) = Block(z) − z   (the block's attention and MLP branches)</pre>
 *
 * Why this form of input injection: the pre-LayerNorm block carries an identity residual, so
 * Block(z + x) has Jacobian I + ∂r and no contraction (its fixed point would need r = −x); taking
 * the branches alone and re-anchoring them at x gives Jacobian ∂r, small at init (residual
 * projections start at initStd/√2), and one application from z = x is exactly the 1-layer model,
 * Block(x). The solver starts there.
 *
 * <p>Forward: the solver's evaluations run the block's ordinary forward, each overwriting the
 * activations of the last, then one more application at z* keeps them for backward, so activation
 * memory does not grow with iterations (the solver's own history of 2·history vectors lives on the
 * host). Backward by the implicit function theorem: u = g + Jᵀu for g = ∂L/∂z*, solved with the
 * same method, each Jᵀu a vector–Jacobian product through the saved application with parameter
 * gradients discarded ({@link Params#discardGradients}); then one normal backward with upstream u
 * accumulates the parameter gradients, and u itself is the gradient into x.
 *
 * <p>For the first {@code pretrain_steps} optimizer steps the block is instead applied
 * {@code pretrain_iter} times from z = x and backpropagated through every application: the
 * forward keeps only each application's input, and the backward recomputes one application at a
 * time before backpropagating it (exact unrolled gradients with one application's activations).
 *
 * <p>Deterministic: the solver is, and every evaluation of f uses the step's same dropout masks.
 */
final class Deq implements AutoCloseable {
    private final DeqConfig cfg;
    private final Block block;
    private final Params params;
    private final StepContext step;
    private final int c;
    private final Activations acts;
    /** The block's input z [T, C]: each evaluation's, and after the forward the saved application's. */
    private final Activation zIn;
    /** Block(z) [T, C] within the forward; the upstream copy the block's backward consumes, and dz, within backward. */
    private final Activation blockOut;
    private final Activation up;
    private final Activation dz;
    private float[] injection;
    /** The inputs of an unrolled pass's applications, z_0 = x first; null after an implicit forward. */
    private float[][] iterates;
    private Seqs seqs;
    private long optimizerStep;

    Deq(DeqConfig cfg, Block block, Params params, StepContext step, int c, Activations acts) {
        this.cfg = cfg;
        this.block = block;
        this.params = params;
        this.step = step;
        this.c = c;
        this.acts = acts;
        zIn = acts.f32("z");
        blockOut = acts.scratch("deq.block_out");
        up = acts.scratch("deq.up");
        dz = acts.scratch("deq.dz");
    }

    /** Optimizer step {@code s} begins: the first pretrain_steps train unrolled. */
    void startStep(long s) {
        optimizerStep = s;
    }

    /** Whether the next training forward is unrolled. */
    private boolean unrolled() {
        return step.training() && optimizerStep < cfg.pretrainSteps();
    }

    /** f(z) into out, on the host: one block forward whose activations the next one overwrites. */
    private void evaluate(float[] z, float[] out) {
        int t = z.length / c;
        Tensor zt = zIn.write(t, c).copyFrom(z);
        Tensor b = blockOut.write(t, c);
        block.forward(b, zt, seqs);
        float[] bh = b.toFloatArray();
        for (int i = 0; i < out.length; i++) {
            out[i] = bh[i] - z[i] + injection[i];
        }
    }

    /** y = f(z*; x) [T, C] for the embeddings x, with the activations of that one application kept for {@link #backward}. */
    void forward(Tensor y, Tensor x, Seqs s) {
        this.seqs = s;
        injection = x.toFloatArray();
        float[] zStar;
        int iters;
        double residual = 0;
        if (unrolled()) {
            int k = cfg.pretrainIter();
            iterates = new float[k][];
            float[] z = injection.clone();
            for (int i = 0; i < k - 1; i++) {
                iterates[i] = z;
                float[] next = new float[z.length];
                evaluate(z, next);
                z = next;
            }
            iterates[k - 1] = z;
            zStar = z;
            iters = k;
        } else {
            iterates = null;
            FixedPointSolver.Result r = FixedPointSolver.solve(cfg.solver(), this::evaluate, injection, cfg.history(), cfg.maxIter(),
                    cfg.tol());
            zStar = r.z();
            iters = r.iterations() + 1;
            residual = r.residual();
        }
        apply(y, x, zStar);
        if (step.training()) {
            if (iterates != null) {
                // The unrolled pass's last application is the saved one: its residual needs y.
                residual = FixedPointSolver.relative(zStar, y.toFloatArray());
            }
            step.metrics().ratio(DeqConfig.FWD_ITERS, iters, 1);
            step.metrics().ratio(DeqConfig.FWD_RESIDUAL, residual, 1);
        }
    }

    /** y = Block(z) − z + x at z, keeping the block's activations. */
    private void apply(Tensor y, Tensor x, float[] z) {
        int t = x.rows();
        Backend be = x.device().backend();
        Tensor zt = zIn.write(t, c).copyFrom(z);
        Tensor b = blockOut.write(t, c);
        block.forward(b, zt, seqs);
        be.binary(BinaryOp.SUB, y, b, zt);
        be.binary(BinaryOp.ADD, y, y, x);
    }

    /** dx += ∂L/∂x for dy = ∂L/∂z* (consumed); parameter gradients += once. */
    void backward(Tensor dx, Tensor dy) {
        if (iterates != null) {
            backwardUnrolled(dx, dy);
            return;
        }
        int t = dy.rows();
        Backend be = dy.device().backend();
        float[] g = dy.toFloatArray();
        FixedPointSolver.Map adjoint = (u, out) -> {
            float[] ju = vjp(u, t);
            for (int i = 0; i < out.length; i++) {
                out[i] = g[i] + ju[i];
            }
        };
        FixedPointSolver.Result r = FixedPointSolver.solve(cfg.solver(), adjoint, g, cfg.history(), cfg.backwardMaxIter(),
                cfg.backwardTol());
        Tensor u = up.write(t, c).copyFrom(r.z());
        // Through the injection first: the block's backward consumes u.
        be.binary(BinaryOp.ADD, dx, dx, u);
        block.backward(dz.zeros(t, c), u, seqs);
        step.metrics().ratio(DeqConfig.BWD_ITERS, r.iterations(), 1);
        step.metrics().ratio(DeqConfig.BWD_RESIDUAL, r.residual(), 1);
    }

    /** Jᵀu = Bᵀu − u through the saved application (B the block's Jacobian), parameter gradients discarded. */
    private float[] vjp(float[] u, int t) {
        Tensor ut = up.write(t, c).copyFrom(u);
        Tensor d = dz.zeros(t, c);
        params.discardGradients(true);
        try {
            block.backward(d, ut, seqs);
        } finally {
            params.discardGradients(false);
        }
        float[] out = d.toFloatArray();
        for (int i = 0; i < out.length; i++) {
            out[i] -= u[i];
        }
        return out;
    }

    /** Backpropagation through the unrolled applications, last to first, each recomputed before its backward. */
    private void backwardUnrolled(Tensor dx, Tensor dy) {
        int t = dy.rows();
        Backend be = dy.device().backend();
        Tensor g = dy;
        for (int k = iterates.length - 1; k >= 0; k--) {
            if (k < iterates.length - 1) {
                Tensor zt = zIn.write(t, c).copyFrom(iterates[k]);
                block.forward(blockOut.write(t, c), zt, seqs);
            }
            be.binary(BinaryOp.ADD, dx, dx, g);
            Tensor u = up.write(t, c);
            be.copy(u, g);
            Tensor d = dz.zeros(t, c);
            block.backward(d, u, seqs);
            // ∂L/∂z_k = Bᵀg − g: the application's output is Block(z_k) − z_k + x.
            be.binary(BinaryOp.SUB, g, d, g);
        }
        // z_0 = x.
        be.binary(BinaryOp.ADD, dx, dx, g);
        iterates = null;
    }

    @Override
    public void close() {
        acts.close();
    }
}
