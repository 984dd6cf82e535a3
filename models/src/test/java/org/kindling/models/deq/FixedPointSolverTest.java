package org.kindling.models.deq;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.kindling.models.deq.FixedPointSolver.Method;

class FixedPointSolverTest {
    private static final int N = 24;

    /** f(z) = A·z + b with ‖A‖ ≈ rho: a contraction for rho < 1, whose fixed point solves (I − A)z = b. */
    private record Affine(double[][] a, double[] b) implements FixedPointSolver.Map {
        static Affine random(long seed, double rho) {
            SplittableRandom r = new SplittableRandom(seed);
            double[][] a = new double[N][N];
            double[] b = new double[N];
            for (int i = 0; i < N; i++) {
                b[i] = r.nextDouble(-1, 1);
                for (int j = 0; j < N; j++) {
                    a[i][j] = r.nextDouble(-1, 1) * rho / Math.sqrt(N) * Math.sqrt(3);
                }
            }
            return new Affine(a, b);
        }

        @Override
        public void apply(float[] z, float[] out) {
            for (int i = 0; i < N; i++) {
                double s = b[i];
                for (int j = 0; j < N; j++) {
                    s += a[i][j] * z[j];
                }
                out[i] = (float) s;
            }
        }

        /** The fixed point by Gaussian elimination in double. */
        double[] exact() {
            double[][] m = new double[N][N + 1];
            for (int i = 0; i < N; i++) {
                for (int j = 0; j < N; j++) {
                    m[i][j] = (i == j ? 1 : 0) - a[i][j];
                }
                m[i][N] = b[i];
            }
            for (int c = 0; c < N; c++) {
                int p = c;
                for (int r = c + 1; r < N; r++) {
                    if (Math.abs(m[r][c]) > Math.abs(m[p][c])) {
                        p = r;
                    }
                }
                double[] t = m[c];
                m[c] = m[p];
                m[p] = t;
                for (int r = 0; r < N; r++) {
                    if (r != c) {
                        double q = m[r][c] / m[c][c];
                        for (int k = c; k <= N; k++) {
                            m[r][k] -= q * m[c][k];
                        }
                    }
                }
            }
            double[] x = new double[N];
            for (int i = 0; i < N; i++) {
                x[i] = m[i][N] / m[i][i];
            }
            return x;
        }
    }

    @Test
    void bothMethodsReachTheFixedPointOfAContraction() {
        Affine f = Affine.random(3, 0.9);
        double[] want = f.exact();
        for (Method m : Method.values()) {
            FixedPointSolver.Result r = FixedPointSolver.solve(m, f, new float[N], 6, 200, 1e-6);
            assertTrue(r.converged(1e-6), m + " residual " + r.residual());
            for (int i = 0; i < N; i++) {
                assertEquals(want[i], r.z()[i], 1e-4, m + " z[" + i + "]");
            }
        }
    }

    /** Acceleration is the point: both need far fewer evaluations than the plain iteration z ← f(z) at ‖A‖ = 0.95. */
    @Test
    void acceleratedMethodsBeatThePlainIteration() {
        Affine f = Affine.random(5, 0.95);
        float[] z = new float[N];
        float[] next = new float[N];
        int plain = 0;
        while (plain < 10_000) {
            f.apply(z, next);
            plain++;
            if (FixedPointSolver.relative(z, next) < 1e-5) {
                break;
            }
            float[] t = z;
            z = next;
            next = t;
        }
        for (Method m : Method.values()) {
            FixedPointSolver.Result r = FixedPointSolver.solve(m, f, new float[N], 6, 10_000, 1e-5);
            assertTrue(r.converged(1e-5), m + " residual " + r.residual());
            assertTrue(r.iterations() * 2 < plain, m + " took " + r.iterations() + " evaluations, the plain iteration " + plain);
        }
    }

    /** An expanding map: the solve breaks out well before max_iter and returns the best (the first) iterate. */
    @Test
    void divergenceBreaksOutWithTheBestIterate() {
        FixedPointSolver.Map expand = (z, out) -> {
            for (int i = 0; i < z.length; i++) {
                out[i] = 3 * z[i] + 1;
            }
        };
        float[] z0 = new float[N];
        for (Method m : Method.values()) {
            FixedPointSolver.Result r = FixedPointSolver.solve(m, expand, z0, 4, 1000, 1e-6);
            assertTrue(r.iterations() < 1000, m + " ran " + r.iterations() + " evaluations");
            assertTrue(Double.isFinite(r.residual()), m + " residual " + r.residual());
            float[] f0 = new float[N];
            expand.apply(z0, f0);
            double first = FixedPointSolver.relative(z0, f0);
            assertTrue(r.residual() <= first, m + " kept a worse iterate: " + r.residual());
        }
    }

    @Test
    void stopsAtTheToleranceAndRepeatsItselfExactly() {
        Affine f = Affine.random(9, 0.8);
        for (Method m : Method.values()) {
            FixedPointSolver.Result loose = FixedPointSolver.solve(m, f, new float[N], 6, 200, 1e-2);
            FixedPointSolver.Result tight = FixedPointSolver.solve(m, f, new float[N], 6, 200, 1e-6);
            assertTrue(loose.residual() < 1e-2 && loose.iterations() < tight.iterations(), m + ": " + loose + " vs " + tight);
            assertArrayEquals(tight.z(), FixedPointSolver.solve(m, f, new float[N], 6, 200, 1e-6).z(), m + " is deterministic");
        }
    }

    @Test
    void rejectsBadSettings() {
        Affine f = Affine.random(1, 0.5);
        assertThrows(IllegalArgumentException.class, () -> FixedPointSolver.solve(Method.ANDERSON, f, new float[N], 0, 10, 1e-3));
        assertThrows(IllegalArgumentException.class, () -> FixedPointSolver.solve(Method.BROYDEN, f, new float[N], 3, 0, 1e-3));
    }
}
