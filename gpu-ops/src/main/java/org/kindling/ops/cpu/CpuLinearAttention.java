package org.kindling.ops.cpu;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.List;
import org.kindling.ops.DType;
import org.kindling.ops.KernelChecks;
import org.kindling.ops.LinearAttention;
import org.kindling.ops.Tensor;
import org.kindling.ops.Varlen;

/**
 * Causal linear attention (Katharopoulos et al. 2020) on the CPU, blockwise: each sequence is cut
 * into chunks of {@link #C} tokens; within a chunk the scores Q·Kᵀ form a small masked C×C GEMM,
 * and earlier chunks enter through a running F×D state S = Σ k vᵀ and F-vector normaliser
 * z = Σ k, so memory is O(C² + F·D) per worker and never T×F×D. The backward runs twice over
 * the chunks: forward, recomputing S and z, for dQ and the per-token u = dO/n and c = −dO·O/n it
 * saves (T×(D+1) per worker); then in reverse, with the reverse states R = Σ q uᵀ and r = Σ c q
 * of later chunks, for dK and dV.
 *
 * <p>One work item per (sequence, head); each writes only its own rows and head columns, and its
 * arithmetic does not depend on the thread that runs it, so results are deterministic.
 */
final class CpuLinearAttention {
    static final int C = 64;

    private final CpuDevice device;
    private final CpuPool pool;

    CpuLinearAttention(CpuDevice device, CpuPool pool) {
        this.device = device;
        this.pool = pool;
    }

    private static float[] f(Tensor t, String what) {
        return KernelChecks.storage(t, DType.F32, CpuStorage.class, "the CPU", "linear attention " + what).floats();
    }

    private static void checkFeatures(String what, Tensor t, int rowLength) {
        float[] x = f(t, what);
        int o = t.offset();
        LinearAttention.checkFeatures(what, t.numel(), rowLength, i -> x[o + i]);
    }

    /** (sequence, head) pairs, longest sequences first for balance. */
    private static List<int[]> items(LinearAttention l) {
        List<int[]> items = new ArrayList<>();
        for (int b = 0; b < l.sequences(); b++) {
            for (int h = 0; h < l.heads(); h++) {
                if (l.length(b) > 0) {
                    items.add(new int[] {b, h});
                }
            }
        }
        items.sort(Comparator.comparingInt((int[] it) -> -l.length(it[0])));
        return items;
    }

    /** One (sequence, head)'s operands: row-major views with leading dimensions NH·F and NH·D. */
    private record Op(LinearAttention l, float[] q, int oq, float[] k, int ok, float[] v, int ov, float eps) {
        int ldq() {
            return l.heads() * l.features();
        }

        int ldv() {
            return l.heads() * l.headDim();
        }

        /** Element offset of row r, head h in a q-like tensor starting at base. */
        int qAt(int base, int r, int h) {
            return base + r * ldq() + h * l.features();
        }

        int vAt(int base, int r, int h) {
            return base + r * ldv() + h * l.headDim();
        }

        /** P = Q·Kᵀ for rows [r0, r0+rows) into ws[p], masked to j ≤ i. */
        void scores(int r0, int rows, int h, float[] ws, int p) {
            Blas.sgemm(false, true, rows, rows, l.features(), 1f, q, qAt(oq, r0, h), ldq(), k, qAt(ok, r0, h), ldq(), 0f,
                    ws, p, C);
            for (int i = 0; i < rows; i++) {
                Arrays.fill(ws, p + i * C + i + 1, p + i * C + rows, 0f);
            }
        }

        /** den[i] = eps + q_i·z + Σ_j P_ij for masked scores P, summed in double. */
        void denominators(int r0, int rows, int h, float[] ws, int p, int z, int den) {
            for (int i = 0; i < rows; i++) {
                double s = eps + VecMath.dot(q, qAt(oq, r0 + i, h), ws, z, l.features());
                for (int j = 0; j <= i; j++) {
                    s += ws[p + i * C + j];
                }
                ws[den + i] = (float) s;
            }
        }

        /** S += Kᵀ·V and z += Σ k over rows [r0, r0+rows). */
        void advance(int r0, int rows, int h, float[] ws, int s, int z) {
            int f = l.features();
            Blas.sgemm(true, false, f, l.headDim(), rows, 1f, k, qAt(ok, r0, h), ldq(), v, vAt(ov, r0, h), ldv(), 1f, ws, s,
                    l.headDim());
            for (int i = 0; i < rows; i++) {
                VecMath.addTo(ws, z, k, qAt(ok, r0 + i, h), f);
            }
        }
    }

    // ---- forward ----

    void forward(Tensor out, Tensor q, Tensor k, Tensor v, Varlen cuSeqlens, int heads, float eps) {
        LinearAttention l = LinearAttention.check(out, q, k, v, cuSeqlens, heads, eps);
        checkFeatures("q", q, heads * l.features());
        checkFeatures("k", k, heads * l.features());
        Op op = new Op(l, f(q, "q"), q.offset(), f(k, "k"), k.offset(), f(v, "v"), v.offset(), eps);
        float[] o = f(out, "out");
        int oo = out.offset();
        int fd = l.features() * l.headDim();
        List<int[]> items = items(l);
        pool.runItems(device, items.size(), fd + l.features() + C * C + C, (it, ws, w) -> {
            int b = items.get(it)[0];
            int h = items.get(it)[1];
            int s = w;
            int z = s + fd;
            int p = z + l.features();
            int den = p + C * C;
            Arrays.fill(ws, s, p, 0f);
            for (int c0 = 0; c0 < l.length(b); c0 += C) {
                int r0 = l.cu()[b] + c0;
                int rows = Math.min(C, l.length(b) - c0);
                op.scores(r0, rows, h, ws, p);
                op.denominators(r0, rows, h, ws, p, z, den);
                int dst = op.vAt(oo, r0, h);
                Blas.sgemm(false, false, rows, l.headDim(), rows, 1f, ws, p, C, op.v, op.vAt(op.ov, r0, h), op.ldv(), 0f, o,
                        dst, op.ldv());
                Blas.sgemm(false, false, rows, l.headDim(), l.features(), 1f, op.q, op.qAt(op.oq, r0, h), op.ldq(), ws, s,
                        l.headDim(), 1f, o, dst, op.ldv());
                for (int i = 0; i < rows; i++) {
                    divide(o, dst + i * op.ldv(), l.headDim(), ws[den + i]);
                }
                op.advance(r0, rows, h, ws, s, z);
            }
        });
    }

    private static void divide(float[] x, int off, int n, float by) {
        for (int i = 0; i < n; i++) {
            x[off + i] /= by;
        }
    }

    // ---- backward ----

    void backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Varlen cuSeqlens, int heads,
                  float eps) {
        LinearAttention l = LinearAttention.check(dout, q, k, v, cuSeqlens, heads, eps);
        l.checkGrads(dq, dk, dv, dout, q, k, v);
        checkFeatures("q", q, heads * l.features());
        checkFeatures("k", k, heads * l.features());
        Op op = new Op(l, f(q, "q"), q.offset(), f(k, "k"), k.offset(), f(v, "v"), v.offset(), eps);
        float[] g = f(dout, "dout");
        float[] dqa = f(dq, "dq");
        float[] dka = f(dk, "dk");
        float[] dva = f(dv, "dv");
        int f = l.features();
        int d = l.headDim();
        int fd = f * d;
        int maxL = l.maxLength();
        List<int[]> items = items(l);
        int scratch = 2 * fd + 2 * f + 2 * C * C + C + C * d + maxL * (d + 1);
        pool.runItems(device, items.size(), scratch, (it, ws, w) -> {
            int b = items.get(it)[0];
            int h = items.get(it)[1];
            int s = w;
            int z = s + fd;
            int rs = z + f;
            int rz = rs + fd;
            int p = rz + f;
            int ds = p + C * C;
            int den = ds + C * C;
            int o = den + C;
            int u = o + C * d;
            int cs = u + maxL * d;
            Arrays.fill(ws, s, rs, 0f);
            int len = l.length(b);
            for (int c0 = 0; c0 < len; c0 += C) {
                int r0 = l.cu()[b] + c0;
                int rows = Math.min(C, len - c0);
                int qr = op.qAt(op.oq, r0, h);
                int kr = op.qAt(op.ok, r0, h);
                int vr = op.vAt(op.ov, r0, h);
                op.scores(r0, rows, h, ws, p);
                op.denominators(r0, rows, h, ws, p, z, den);
                Blas.sgemm(false, false, rows, d, rows, 1f, ws, p, C, op.v, vr, op.ldv(), 0f, ws, o, d);
                Blas.sgemm(false, false, rows, d, f, 1f, op.q, qr, op.ldq(), ws, s, d, 1f, ws, o, d);
                for (int i = 0; i < rows; i++) {
                    float n = ws[den + i];
                    int gi = op.vAt(dout.offset(), r0 + i, h);
                    int ui = u + (c0 + i) * d;
                    double dot = 0;
                    for (int e = 0; e < d; e++) {
                        float out = ws[o + i * d + e] / n;
                        dot += (double) g[gi + e] * out;
                        ws[ui + e] = g[gi + e] / n;
                    }
                    ws[cs + c0 + i] = (float) (-dot / n);
                }
                gradScores(op, rows, vr, h, ws, u + c0 * d, cs + c0, ds);
                // dQ += dS·K + U·Sᵀ + c·zᵀ, S and z being the state before this chunk.
                int dqr = op.qAt(dq.offset(), r0, h);
                Blas.sgemm(false, false, rows, f, rows, 1f, ws, ds, C, op.k, kr, op.ldq(), 1f, dqa, dqr, op.ldq());
                Blas.sgemm(false, true, rows, f, d, 1f, ws, u + c0 * d, d, ws, s, d, 1f, dqa, dqr, op.ldq());
                for (int i = 0; i < rows; i++) {
                    axpy(dqa, dqr + i * op.ldq(), ws, z, f, ws[cs + c0 + i]);
                }
                op.advance(r0, rows, h, ws, s, z);
            }
            Arrays.fill(ws, rs, p, 0f);
            for (int c0 = (len - 1) / C * C; c0 >= 0; c0 -= C) {
                int r0 = l.cu()[b] + c0;
                int rows = Math.min(C, len - c0);
                int qr = op.qAt(op.oq, r0, h);
                int kr = op.qAt(op.ok, r0, h);
                int vr = op.vAt(op.ov, r0, h);
                op.scores(r0, rows, h, ws, p);
                gradScores(op, rows, vr, h, ws, u + c0 * d, cs + c0, ds);
                // dK += dSᵀ·Q + V·Rᵀ + r; dV += Pᵀ·U + K·R, R and r summing the chunks after this one.
                int dkr = op.qAt(dk.offset(), r0, h);
                int dvr = op.vAt(dv.offset(), r0, h);
                Blas.sgemm(true, false, rows, f, rows, 1f, ws, ds, C, op.q, qr, op.ldq(), 1f, dka, dkr, op.ldq());
                Blas.sgemm(false, true, rows, f, d, 1f, op.v, vr, op.ldv(), ws, rs, d, 1f, dka, dkr, op.ldq());
                for (int j = 0; j < rows; j++) {
                    VecMath.addTo(dka, dkr + j * op.ldq(), ws, rz, f);
                }
                Blas.sgemm(true, false, rows, d, rows, 1f, ws, p, C, ws, u + c0 * d, d, 1f, dva, dvr, op.ldv());
                Blas.sgemm(false, false, rows, d, f, 1f, op.k, kr, op.ldq(), ws, rs, d, 1f, dva, dvr, op.ldv());
                Blas.sgemm(true, false, f, d, rows, 1f, op.q, qr, op.ldq(), ws, u + c0 * d, d, 1f, ws, rs, d);
                for (int i = 0; i < rows; i++) {
                    axpy(ws, rz, op.q, qr + i * op.ldq(), f, ws[cs + c0 + i]);
                }
            }
        });
    }

    /** dS = U·Vᵀ + c (row-wise), masked to j ≤ i: the gradient of each chunk score q_i·k_j. */
    private static void gradScores(Op op, int rows, int vr, int h, float[] ws, int u, int cs, int ds) {
        int d = op.l().headDim();
        Blas.sgemm(false, true, rows, rows, d, 1f, ws, u, d, op.v, vr, op.ldv(), 0f, ws, ds, C);
        for (int i = 0; i < rows; i++) {
            int row = ds + i * C;
            float c = ws[cs + i];
            for (int j = 0; j <= i; j++) {
                ws[row + j] += c;
            }
            Arrays.fill(ws, row + i + 1, row + rows, 0f);
        }
    }

    /** y += a·x. */
    private static void axpy(float[] y, int yo, float[] x, int xo, int n, float a) {
        for (int i = 0; i < n; i++) {
            y[yo + i] += a * x[xo + i];
        }
    }

    // ---- recurrent step ----

    void step(Tensor out, Tensor state, Tensor norm, Tensor q, Tensor k, Tensor v, int heads, float eps) {
        LinearAttention l = LinearAttention.checkStep(out, state, norm, q, k, v, heads, eps);
        checkFeatures("q", q, heads * l.features());
        checkFeatures("k", k, heads * l.features());
        Op op = new Op(l, f(q, "q"), q.offset(), f(k, "k"), k.offset(), f(v, "v"), v.offset(), eps);
        float[] o = f(out, "out");
        float[] sa = f(state, "state");
        float[] za = f(norm, "norm");
        int f = l.features();
        int d = l.headDim();
        // One item per head: the token loop is sequential, each token O(F·D).
        pool.parallelFor(heads, 1, (lo, hi) -> {
            for (int h = lo; h < hi; h++) {
                int s = state.offset() + h * f * d;
                int z = norm.offset() + h * f;
                for (int t = 0; t < l.tokens(); t++) {
                    int qt = op.qAt(op.oq, t, h);
                    int kt = op.qAt(op.ok, t, h);
                    int vt = op.vAt(op.ov, t, h);
                    for (int a = 0; a < f; a++) {
                        za[z + a] += op.k[kt + a];
                        axpy(sa, s + a * d, op.v, vt, d, op.k[kt + a]);
                    }
                    float n = (float) (eps + VecMath.dot(op.q, qt, za, z, f));
                    int dst = op.vAt(out.offset(), t, h);
                    Blas.sgemm(false, false, 1, d, f, 1f, op.q, qt, op.ldq(), sa, s, d, 0f, o, dst, op.ldv());
                    divide(o, dst, d, n);
                }
            }
        });
    }
}
