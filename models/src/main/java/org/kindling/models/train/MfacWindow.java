package org.kindling.models.train;

import org.kindling.ops.Backend;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Gemm;
import org.kindling.ops.Tensor;

/**
 * M-FAC's inverse-Fisher products (Frantar et al. 2021): a ring of the last m gradients
 * {@code G [m, d]} on the device, the damped empirical Fisher {@code F = λI + (1/m)·GᵀG}, and
 * {@code F⁻¹x = λ⁻¹[x − Gᵀ(mλI + GGᵀ)⁻¹Gx]} (Woodbury) without ever forming F. The d-sized work is
 * two fp32 matrix–vector products on the device ({@code Gx} and {@code Gᵀc}), O(d·m); the m×m
 * system is solved on the host in double. The Gram matrix {@code GGᵀ} is kept on the host in
 * double, and an insertion replaces only its row and column (the new gradient's dot products, which
 * {@code Gx} of that gradient also gives). Rows never written are zero and add nothing to F.
 */
public final class MfacWindow implements AutoCloseable {
    private final Backend be;
    private final int m;
    private final int d;
    private final double damp;
    private final Tensor window;
    private final Tensor dots;
    private final Tensor coef;
    private final Tensor gramState;
    private final double[] gram;
    private final float[] dotsHost;
    private final float[] coefHost;
    private final double[] system;
    private final double[] rhs;

    public MfacWindow(Device dev, int m, int d, double damp) {
        if (m < 1 || d < 1) {
            throw new IllegalArgumentException("M-FAC needs a window of at least 1 gradient of at least 1 element, got " + m + " × " + d);
        }
        if ((long) m * d > Integer.MAX_VALUE) {
            throw new IllegalArgumentException("M-FAC's window of " + m + " gradients × " + d + " parameters is more than one tensor "
                    + "holds (2^31 − 1 elements): lower optimizer.ngrads");
        }
        if (!(damp > 0) || !Double.isFinite(damp)) {
            throw new IllegalArgumentException("M-FAC damping must be a finite number > 0, got " + damp);
        }
        this.be = dev.backend();
        this.m = m;
        this.d = d;
        this.damp = damp;
        this.window = dev.allocate(DType.F32, m, d);
        this.dots = dev.allocate(DType.F32, m);
        this.coef = dev.allocate(DType.F32, m);
        this.gramState = dev.allocate(DType.F32, m, m);
        be.fill(window, 0f);
        be.fill(gramState, 0f);
        this.gram = new double[m * m];
        this.dotsHost = new float[m];
        this.coefHost = new float[m];
        this.system = new double[m * m];
        this.rhs = new double[m];
    }

    public int size() {
        return m;
    }

    public int dim() {
        return d;
    }

    /** The gradients, one per row ({@code [m, d]}). */
    public Tensor window() {
        return window;
    }

    /** Device bytes of the window and its small buffers. */
    public long memoryBytes() {
        return (long) Float.BYTES * ((long) m * d + 2L * m + (long) m * m);
    }

    /** Replaces row {@code row} of the window with {@code scale·g} and its row and column of the Gram matrix. */
    public void insert(int row, Tensor g, float scale) {
        Tensor slot = row(row);
        be.affine(slot, g, scale, 0f);
        gramRow(row, slot);
    }

    /** {@link #insert} and then {@code out = F⁻¹·(scale·g)}, reusing the insertion's dot products. */
    public void insertAndMultiply(Tensor out, int row, Tensor g, float scale) {
        insert(row, g, scale);
        solveAndApply(out, row(row));
    }

    /** {@code out = F⁻¹x}; {@code out} may not be {@code x}. */
    public void multiply(Tensor out, Tensor x) {
        checkVector(x, "x");
        be.gemm(Gemm.of(false, false, m, 1, d), dots, window, x);
        be.copyToHost(dotsHost, dots);
        solveAndApply(out, x);
    }

    /** The Gram matrix as fp32 (each entry is an fp32 dot product, so this loses nothing), for checkpoints. */
    public Tensor gramState() {
        gramState.copyFrom(gram);
        return gramState;
    }

    /** Reloads the host Gram matrix from {@link #gramState()}'s tensor after a restore wrote it. */
    public void restoreGram() {
        double[] g = gramState.toDoubleArray();
        System.arraycopy(g, 0, gram, 0, gram.length);
    }

    private Tensor row(int row) {
        if (row < 0 || row >= m) {
            throw new IllegalArgumentException("M-FAC window row " + row + " is outside 0.." + (m - 1));
        }
        return window.view(row * d, d);
    }

    private void gramRow(int row, Tensor slot) {
        be.gemm(Gemm.of(false, false, m, 1, d), dots, window, slot);
        be.copyToHost(dotsHost, dots);
        for (int j = 0; j < m; j++) {
            gram[row * m + j] = dotsHost[j];
            gram[j * m + row] = dotsHost[j];
        }
    }

    /** With {@code dotsHost = G·x}: solves {@code (mλI + GGᵀ)c = Gx} in double, then {@code out = λ⁻¹(x − Gᵀc)}. */
    private void solveAndApply(Tensor out, Tensor x) {
        checkVector(out, "out");
        for (int i = 0; i < m; i++) {
            rhs[i] = dotsHost[i];
        }
        System.arraycopy(gram, 0, system, 0, gram.length);
        for (int i = 0; i < m; i++) {
            system[i * m + i] += m * damp;
        }
        solve(system, rhs, m);
        for (int i = 0; i < m; i++) {
            coefHost[i] = (float) rhs[i];
        }
        be.copyFromHost(coef, coefHost);
        be.copy(out, x);
        be.gemm(Gemm.of(true, false, d, 1, m).scaled(-1f, 1f), out, window, coef);
        be.affine(out, out, (float) (1.0 / damp), 0f);
    }

    private void checkVector(Tensor t, String name) {
        if (t.numel() != d) {
            throw new IllegalArgumentException("M-FAC " + name + " has " + t.numel() + " elements, the window's gradients " + d);
        }
    }

    /**
     * Solves {@code a·x = b} in place (b becomes x) by Gaussian elimination with partial pivoting: a
     * is symmetric positive definite in exact arithmetic, but its Gram part holds rounded fp32 dot
     * products, so pivoting keeps the solve stable where Cholesky could meet a tiny pivot.
     */
    static void solve(double[] a, double[] b, int n) {
        for (int k = 0; k < n; k++) {
            int p = k;
            for (int i = k + 1; i < n; i++) {
                if (Math.abs(a[i * n + k]) > Math.abs(a[p * n + k])) {
                    p = i;
                }
            }
            if (!(Math.abs(a[p * n + k]) > 0) || !Double.isFinite(a[p * n + k])) {
                throw new IllegalStateException("M-FAC's " + n + "×" + n + " system is singular or not finite at column " + k
                        + " (a non-finite gradient?)");
            }
            if (p != k) {
                for (int j = 0; j < n; j++) {
                    double t = a[k * n + j];
                    a[k * n + j] = a[p * n + j];
                    a[p * n + j] = t;
                }
                double t = b[k];
                b[k] = b[p];
                b[p] = t;
            }
            for (int i = k + 1; i < n; i++) {
                double f = a[i * n + k] / a[k * n + k];
                if (f != 0) {
                    for (int j = k; j < n; j++) {
                        a[i * n + j] -= f * a[k * n + j];
                    }
                    b[i] -= f * b[k];
                }
            }
        }
        for (int i = n - 1; i >= 0; i--) {
            double s = b[i];
            for (int j = i + 1; j < n; j++) {
                s -= a[i * n + j] * b[j];
            }
            b[i] = s / a[i * n + i];
        }
    }

    /**
     * The dense reference for benchmarks and tests: {@code F⁻¹x} with {@code F = λI + (1/m)·Σ g gᵀ} over
     * {@code grads} (at most m; missing ones count as zero) formed in double and solved by Cholesky,
     * O(d²·m + d³) time and d² doubles of memory.
     */
    public static double[] dense(java.util.List<float[]> grads, int m, float[] x, double damp) {
        int d = x.length;
        if (grads.size() > m) {
            throw new IllegalArgumentException(grads.size() + " gradients do not fit a window of " + m);
        }
        double[] f = new double[d * d];
        for (int i = 0; i < d; i++) {
            f[i * d + i] = damp;
        }
        for (float[] g : grads) {
            for (int i = 0; i < d; i++) {
                for (int j = 0; j < d; j++) {
                    f[i * d + j] += (double) g[i] * g[j] / m;
                }
            }
        }
        double[] l = new double[d * d];
        for (int i = 0; i < d; i++) {
            for (int j = 0; j <= i; j++) {
                double s = f[i * d + j];
                for (int k = 0; k < j; k++) {
                    s -= l[i * d + k] * l[j * d + k];
                }
                l[i * d + j] = i == j ? Math.sqrt(s) : s / l[j * d + j];
            }
        }
        double[] y = new double[d];
        for (int i = 0; i < d; i++) {
            double s = x[i];
            for (int k = 0; k < i; k++) {
                s -= l[i * d + k] * y[k];
            }
            y[i] = s / l[i * d + i];
        }
        for (int i = d - 1; i >= 0; i--) {
            double s = y[i];
            for (int k = i + 1; k < d; k++) {
                s -= l[k * d + i] * y[k];
            }
            y[i] = s / l[i * d + i];
        }
        return y;
    }

    @Override
    public void close() {
        window.close();
        dots.close();
        coef.close();
        gramState.close();
    }
}
