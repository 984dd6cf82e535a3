package org.kindling.models.config;

import java.util.Map;
import org.kindling.models.deq.FixedPointSolver;

/**
 * The {@code deq} section of a model: the model's one weight-tied block is solved to its fixed
 * point instead of being stacked (see {@code org.kindling.models.Deq}). Every key is checked here.
 *
 * @param solver {@code solver}: anderson or broyden, for the forward fixed point and the backward linear system alike
 * @param history {@code history}: Anderson's memory / Broyden's number of low-rank updates kept
 * @param maxIter {@code max_iter}: evaluations of the block the forward solve may make
 * @param tol {@code tol}: the forward solve stops once ‖f(z) − z‖ / ‖f(z)‖ is below it
 * @param backwardMaxIter {@code backward_max_iter}: vector–Jacobian products the backward solve may make
 * @param backwardTol {@code backward_tol}: the backward solve's relative-residual target
 * @param pretrainSteps {@code pretrain_steps}: the first optimizer steps train unrolled (the block applied
 *     {@code pretrain_iter} times, backpropagated through every application) instead of implicitly; a step
 *     count rather than a share of max_steps, because the model does not know the run's length and a resumed
 *     run with another max_steps must switch at the same step
 * @param pretrainIter {@code pretrain_iter}: applications of the block in an unrolled step
 */
public record DeqConfig(FixedPointSolver.Method solver, int history, int maxIter, double tol, int backwardMaxIter,
                        double backwardTol, int pretrainSteps, int pretrainIter) {
    /** Step metrics (means over micro-batches and workers): block evaluations of the forward solve, including the saved application. */
    public static final String FWD_ITERS = "deq_fwd_iters";
    /** The forward solve's final relative residual ‖f(z) − z‖ / ‖f(z)‖. */
    public static final String FWD_RESIDUAL = "deq_fwd_residual";
    /** Vector–Jacobian products of the backward solve (implicit steps only). */
    public static final String BWD_ITERS = "deq_bwd_iters";
    /** The backward solve's final relative residual (implicit steps only). */
    public static final String BWD_RESIDUAL = "deq_bwd_residual";

    public DeqConfig {
        if (solver == null) {
            throw new IllegalArgumentException("deq.solver must be anderson or broyden, got none");
        }
        atLeast("deq.history", history, 1);
        atLeast("deq.max_iter", maxIter, 1);
        atLeast("deq.backward_max_iter", backwardMaxIter, 1);
        atLeast("deq.pretrain_steps", pretrainSteps, 0);
        atLeast("deq.pretrain_iter", pretrainIter, 1);
        if (!(tol >= 0 && tol < 1)) {
            throw new IllegalArgumentException("deq.tol must be in [0, 1) (a relative residual), got " + tol);
        }
        if (!(backwardTol >= 0 && backwardTol < 1)) {
            throw new IllegalArgumentException("deq.backward_tol must be in [0, 1) (a relative residual), got " + backwardTol);
        }
    }

    /** Anderson with history 6, 30 iterations to 1e-3 both ways, no unrolled pre-training. */
    public static DeqConfig defaults() {
        return new DeqConfig(FixedPointSolver.Method.ANDERSON, 6, 30, 1e-3, 30, 1e-3, 0, 6);
    }

    private static void atLeast(String key, int v, int min) {
        if (v < min) {
            throw new IllegalArgumentException(key + " must be at least " + min + ", got " + v);
        }
    }

    /** Reads the {@code deq} mapping; absent keys take {@link #defaults()}. */
    static DeqConfig read(ConfigReader r) {
        DeqConfig d = defaults();
        String s = r.string("solver", d.solver().key());
        FixedPointSolver.Method method = switch (s) {
            case "anderson" -> FixedPointSolver.Method.ANDERSON;
            case "broyden" -> FixedPointSolver.Method.BROYDEN;
            default -> throw r.error("solver", "is \"" + s + "\"; known: anderson, broyden");
        };
        int history = r.integer("history", d.history());
        int maxIter = r.integer("max_iter", d.maxIter());
        double tol = r.number("tol", d.tol());
        int backwardMaxIter = r.integer("backward_max_iter", maxIter);
        double backwardTol = r.number("backward_tol", tol);
        int pretrainSteps = r.integer("pretrain_steps", d.pretrainSteps());
        int pretrainIter = r.integer("pretrain_iter", d.pretrainIter());
        r.finish();
        try {
            return new DeqConfig(method, history, maxIter, tol, backwardMaxIter, backwardTol, pretrainSteps, pretrainIter);
        } catch (IllegalArgumentException e) {
            throw r.invalid(e);
        }
    }

    /** The mapping {@link #read} accepts. */
    public Map<String, Object> toMap() {
        Map<String, Object> m = ConfigReader.ordered();
        m.put("solver", solver.key());
        m.put("history", history);
        m.put("max_iter", maxIter);
        m.put("tol", tol);
        m.put("backward_max_iter", backwardMaxIter);
        m.put("backward_tol", backwardTol);
        m.put("pretrain_steps", pretrainSteps);
        m.put("pretrain_iter", pretrainIter);
        return m;
    }
}
