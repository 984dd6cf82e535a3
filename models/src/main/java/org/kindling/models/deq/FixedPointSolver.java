package org.kindling.models.deq;

/**
 * Finds a fixed point z = f(z) of a map over float vectors, by Anderson acceleration or Broyden's
 * method (as in Bai et al. 2019, "Deep Equilibrium Models"). Stateless and deterministic: the same
 * map and start give the same iterates bit for bit, so a resumed run repeats them. Iterates are
 * float; inner products, the Anderson least-squares system and Broyden's scalars are double.
 *
 * <p>Both stop once the relative residual ‖f(z) − z‖ / ‖f(z)‖ falls below {@code tol}, and return
 * the iterate with the smallest relative residual seen, not the last one; they break out early
 * when the residual turns non-finite or grows past {@link #DIVERGENCE} times the best one.
 */
public final class FixedPointSolver {
    /** A residual this many times the best one so far ends the solve: the iteration is diverging. */
    public static final double DIVERGENCE = 1e3;
    /** Anderson's ridge on the residuals' Gram matrix, times its smallest diagonal entry: keeps the small system solvable when residuals repeat. */
    public static final double RIDGE = 1e-4;

    /** The map: writes f(z) into {@code out} (same length as z); must not keep either array. */
    @FunctionalInterface
    public interface Map {
        void apply(float[] z, float[] out);
    }

    /** Which method. */
    public enum Method {
        ANDERSON, BROYDEN;

        public String key() {
            return name().toLowerCase();
        }
    }

    /**
     * @param z the best iterate found
     * @param iterations evaluations of f made
     * @param residual the relative residual ‖f(z) − z‖ / ‖f(z)‖ at z
     */
    public record Result(float[] z, int iterations, double residual) {
        public boolean converged(double tol) {
            return residual < tol;
        }
    }

    private FixedPointSolver() {
    }

    /** Bytes of host memory a solve over n-element vectors holds besides its start and result. */
    public static long stateBytes(Method method, int n, int history) {
        // Anderson: history of iterates and of map values; Broyden: history of u and v, plus x, g and update.
        return method == Method.ANDERSON ? 4L * n * (2L * history + 1) : 4L * n * (2L * history + 4);
    }

    public static Result solve(Method method, Map f, float[] z0, int history, int maxIter, double tol) {
        if (history < 1 || maxIter < 1 || !(tol >= 0)) {
            throw new IllegalArgumentException("need history >= 1, max_iter >= 1 and tol >= 0, got " + history + ", " + maxIter
                    + ", " + tol);
        }
        return method == Method.ANDERSON ? anderson(f, z0, history, maxIter, tol) : broyden(f, z0, history, maxIter, tol);
    }

    /** Tracks the best iterate and decides when to stop. */
    private static final class Best {
        final double tol;
        float[] z;
        double residual = Double.POSITIVE_INFINITY;
        int evaluations;

        Best(double tol) {
            this.tol = tol;
        }

        /** Records f evaluated at z (fz); returns whether to stop. */
        boolean record(float[] z, float[] fz) {
            evaluations++;
            double r = relative(z, fz);
            if (!Double.isFinite(r)) {
                return true;
            }
            if (r < residual) {
                residual = r;
                this.z = z.clone();
                return r < tol;
            }
            return r > DIVERGENCE * residual;
        }

        Result result(float[] z0) {
            return new Result(z == null ? z0.clone() : z, evaluations, residual);
        }
    }

    /** ‖fz − z‖ / ‖fz‖ (the absolute residual when f(z) is zero). */
    public static double relative(float[] z, float[] fz) {
        double num = 0;
        double den = 0;
        for (int i = 0; i < z.length; i++) {
            double d = (double) fz[i] - z[i];
            num += d * d;
            den += (double) fz[i] * fz[i];
        }
        return den == 0 ? Math.sqrt(num) : Math.sqrt(num / den);
    }

    /**
     * Anderson acceleration with memory m: the next iterate is Σ α_i f(x_i) over the last m iterates,
     * α minimising ‖Σ α_i (f(x_i) − x_i)‖ subject to Σ α_i = 1 (solved through the bordered
     * system [[0, 1ᵀ], [1, GGᵀ + λI]] in double).
     */
    private static Result anderson(Map f, float[] z0, int m, int maxIter, double tol) {
        int n = z0.length;
        Best best = new Best(tol);
        float[][] xs = new float[m][];
        float[][] fs = new float[m][];
        float[] x = z0.clone();
        double[][] gram = new double[m][m];
        for (int k = 0; k < maxIter; k++) {
            int slot = k % m;
            float[] fx = fs[slot] == null ? new float[n] : fs[slot];
            f.apply(x, fx);
            xs[slot] = x;
            fs[slot] = fx;
            if (best.record(x, fx)) {
                break;
            }
            int used = Math.min(k + 1, m);
            // Only the new residual's row of the Gram matrix changes.
            for (int j = 0; j < used; j++) {
                double dot = residualDot(xs[slot], fs[slot], xs[j], fs[j]);
                gram[slot][j] = dot;
                gram[j][slot] = dot;
            }
            double[] alpha = weights(gram, used);
            float[] next = k + 1 < m ? new float[n] : xs[(k + 1) % m];
            for (int i = 0; i < n; i++) {
                double s = 0;
                for (int j = 0; j < used; j++) {
                    s += alpha[j] * fs[j][i];
                }
                next[i] = (float) s;
            }
            x = next;
        }
        return best.result(z0);
    }

    /** (f_a − x_a)·(f_b − x_b). */
    private static double residualDot(float[] xa, float[] fa, float[] xb, float[] fb) {
        double s = 0;
        for (int i = 0; i < xa.length; i++) {
            s += ((double) fa[i] - xa[i]) * ((double) fb[i] - xb[i]);
        }
        return s;
    }

    /** α for the first {@code used} residuals: solves [[0, 1ᵀ], [1, G + λI]]·[ν; α] = [1; 0]. */
    static double[] weights(double[][] gram, int used) {
        int s = used + 1;
        double scale = Double.POSITIVE_INFINITY;
        for (int i = 0; i < used; i++) {
            scale = Math.min(scale, gram[i][i]);
        }
        // Relative to the smallest residual (usually the newest), so the ridge neither swamps it once the
        // residual has fallen far below the history's older ones, nor vanishes beside large residuals.
        double ridge = RIDGE * scale;
        double[][] a = new double[s][s + 1];
        for (int i = 1; i < s; i++) {
            a[0][i] = 1;
            a[i][0] = 1;
            for (int j = 1; j < s; j++) {
                a[i][j] = gram[i - 1][j - 1] + (i == j ? ridge : 0);
            }
        }
        a[0][s] = 1;
        solveInPlace(a);
        double[] alpha = new double[used];
        for (int i = 0; i < used; i++) {
            alpha[i] = a[i + 1][s];
        }
        return alpha;
    }

    /** Gaussian elimination with partial pivoting on an augmented s×(s+1) matrix; the solution ends in the last column. */
    private static void solveInPlace(double[][] a) {
        int s = a.length;
        for (int col = 0; col < s; col++) {
            int piv = col;
            for (int r = col + 1; r < s; r++) {
                if (Math.abs(a[r][col]) > Math.abs(a[piv][col])) {
                    piv = r;
                }
            }
            double[] t = a[col];
            a[col] = a[piv];
            a[piv] = t;
            for (int r = 0; r < s; r++) {
                if (r != col && a[col][col] != 0) {
                    double q = a[r][col] / a[col][col];
                    for (int c = col; c <= s; c++) {
                        a[r][c] -= q * a[col][c];
                    }
                }
            }
        }
        for (int r = 0; r < s; r++) {
            a[r][s] = a[r][r] == 0 ? 0 : a[r][s] / a[r][r];
        }
    }

    /**
     * Broyden's method on g(x) = f(x) − x with a rank-limited inverse Jacobian B = −I + Σ u_i v_iᵀ
     * (at most {@code history} updates, then a restart from −I): step x ← x − B·g(x), then the good
     * Broyden update u = (Δx − B·Δg) / (vᵀΔg), v = Bᵀ·Δx.
     */
    private static Result broyden(Map f, float[] z0, int history, int maxIter, double tol) {
        int n = z0.length;
        Best best = new Best(tol);
        float[][] us = new float[history][];
        float[][] vs = new float[history][];
        float[] x = z0.clone();
        float[] fx = new float[n];
        f.apply(x, fx);
        if (best.record(x, fx)) {
            return best.result(z0);
        }
        float[] g = minus(fx, x);
        float[] update = g.clone();
        for (int k = 1, stored = 0; k < maxIter; k++) {
            float[] xNew = new float[n];
            for (int i = 0; i < n; i++) {
                xNew[i] = x[i] + update[i];
            }
            f.apply(xNew, fx);
            if (best.record(xNew, fx)) {
                break;
            }
            float[] gNew = minus(fx, xNew);
            float[] dx = minus(xNew, x);
            float[] dg = minus(gNew, g);
            float[] v = transposed(us, vs, stored, dx);
            float[] bdg = applied(us, vs, stored, dg);
            double den = dot(v, dg);
            x = xNew;
            g = gNew;
            if (stored == history) {
                // Memory full: restart from B = −I. Dropping only the oldest update breaks the chain the later
                // ones were built on, which stalls the iteration; a restart keeps at least the plain step.
                stored = 0;
            } else if (den != 0 && Double.isFinite(den)) {
                float[] u = new float[n];
                for (int i = 0; i < n; i++) {
                    u[i] = (float) (((double) dx[i] - bdg[i]) / den);
                }
                us[stored] = u;
                vs[stored] = v;
                stored++;
            }
            float[] bg = applied(us, vs, stored, g);
            for (int i = 0; i < n; i++) {
                update[i] = -bg[i];
            }
        }
        return best.result(z0);
    }

    private static float[] minus(float[] a, float[] b) {
        float[] out = new float[a.length];
        for (int i = 0; i < a.length; i++) {
            out[i] = a[i] - b[i];
        }
        return out;
    }

    private static double dot(float[] a, float[] b) {
        double s = 0;
        for (int i = 0; i < a.length; i++) {
            s += (double) a[i] * b[i];
        }
        return s;
    }

    /** B·y = −y + Σ u_i (v_i·y). */
    private static float[] applied(float[][] us, float[][] vs, int used, float[] y) {
        double[] acc = new double[y.length];
        for (int i = 0; i < y.length; i++) {
            acc[i] = -y[i];
        }
        for (int j = 0; j < used; j++) {
            double c = dot(vs[j], y);
            for (int i = 0; i < y.length; i++) {
                acc[i] += c * us[j][i];
            }
        }
        return toFloat(acc);
    }

    /** Bᵀ·y = −y + Σ v_i (u_i·y). */
    private static float[] transposed(float[][] us, float[][] vs, int used, float[] y) {
        return applied(vs, us, used, y);
    }

    private static float[] toFloat(double[] a) {
        float[] out = new float[a.length];
        for (int i = 0; i < a.length; i++) {
            out[i] = (float) a[i];
        }
        return out;
    }
}
