package org.kindling.ops;

import java.util.Arrays;

/**
 * Plain reference twins of every {@link Backend} kernel: simple loops over host arrays in double
 * precision, written for obviousness rather than speed. Tests compare each backend to these, and
 * the reference device ({@link org.kindling.ops.reference.ReferenceDevice#open()}) runs them as its kernels. Inputs are doubles,
 * so the twins compute in double end to end; fp32 test data goes in through {@link #widen}.
 * Shapes follow {@link Backend}: row-wise kernels take {@code [N, C]} as {@code n} rows of
 * {@code c} values. Outputs are fresh arrays; "backward" twins return the gradient itself, not an
 * accumulation.
 */
public final class Reference {
    private Reference() {
    }

    /** The values of {@code x} as doubles (exact): fp32 data for the twins. */
    public static double[] widen(float[] x) {
        double[] out = new double[x.length];
        for (int i = 0; i < x.length; i++) {
            out[i] = x[i];
        }
        return out;
    }

    /** Row-major C[M,N] = alpha·op(A)·op(B) + beta·C for one matrix of a {@link Gemm} layout. */
    public static double[] gemm(Gemm g, double[] c, int oc, double[] a, int oa, double[] b, int ob) {
        double[] out = new double[g.m() * g.n()];
        for (int i = 0; i < g.m(); i++) {
            for (int j = 0; j < g.n(); j++) {
                double s = 0;
                for (int p = 0; p < g.k(); p++) {
                    double av = g.transA() ? a[oa + p * g.lda() + i] : a[oa + i * g.lda() + p];
                    double bv = g.transB() ? b[ob + j * g.ldb() + p] : b[ob + p * g.ldb() + j];
                    s += av * bv;
                }
                double prior = g.beta() == 0f ? 0 : (double) g.beta() * c[oc + i * g.ldc() + j];
                out[i * g.n() + j] = g.alpha() * s + prior;
            }
        }
        return out;
    }

    public static double[] unary(UnaryOp op, double[] x) {
        double[] out = new double[x.length];
        for (int i = 0; i < x.length; i++) {
            out[i] = op.apply(x[i]);
        }
        return out;
    }

    /** b has a's length, or the length of a's rows (broadcast). */
    public static double[] binary(BinaryOp op, double[] a, double[] b) {
        double[] out = new double[a.length];
        for (int i = 0; i < a.length; i++) {
            out[i] = op.apply(a[i], b[i % b.length]);
        }
        return out;
    }

    public static double[] reduceRows(ReduceOp op, double[] x, int n, int c) {
        double[] out = new double[n];
        for (int r = 0; r < n; r++) {
            if (op == ReduceOp.LOG_SUM_EXP) {
                out[r] = logSumExp(x, r * c, c);
                continue;
            }
            double acc = op == ReduceOp.MAX ? Double.NEGATIVE_INFINITY : 0;
            for (int j = 0; j < c; j++) {
                double v = x[r * c + j];
                acc = op == ReduceOp.MAX ? Math.max(acc, v) : acc + v;
            }
            out[r] = op == ReduceOp.MEAN ? acc / c : acc;
        }
        return out;
    }

    /** log Σ exp(x[off … off + c)), shifted by the maximum; an infinite maximum is the result itself. */
    private static double logSumExp(double[] x, int off, int c) {
        double m = Double.NEGATIVE_INFINITY;
        for (int j = 0; j < c; j++) {
            m = Math.max(m, x[off + j]);
        }
        if (Double.isInfinite(m)) {
            return m;
        }
        double s = 0;
        for (int j = 0; j < c; j++) {
            s += Math.exp(x[off + j] - m);
        }
        return m + Math.log(s);
    }

    /** Σ over rows of x[N, C]: the column sums, length C. */
    public static double[] columnSums(double[] x, int n, int c) {
        double[] out = new double[c];
        for (int r = 0; r < n; r++) {
            for (int j = 0; j < c; j++) {
                out[j] += x[r * c + j];
            }
        }
        return out;
    }

    public static double sum(double[] x) {
        double s = 0;
        for (double v : x) {
            s += v;
        }
        return s;
    }

    public static double sumOfSquares(double[] x) {
        double s = 0;
        for (double v : x) {
            s += v * v;
        }
        return s;
    }

    public static double[] softmax(double[] x, int n, int c) {
        double[] y = new double[n * c];
        for (int r = 0; r < n; r++) {
            double max = Double.NEGATIVE_INFINITY;
            for (int j = 0; j < c; j++) {
                max = Math.max(max, x[r * c + j]);
            }
            double sum = 0;
            if (max == Double.NEGATIVE_INFINITY) {
                continue;
            }
            for (int j = 0; j < c; j++) {
                sum += Math.exp(x[r * c + j] - max);
            }
            for (int j = 0; j < c; j++) {
                y[r * c + j] = Math.exp(x[r * c + j] - max) / sum;
            }
        }
        return y;
    }

    /** dx = y ⊙ (dy − Σ dy·y), y = softmax(x). */
    public static double[] softmaxBackward(double[] dy, double[] x, int n, int c) {
        return softmaxBackwardFromOutput(dy, softmax(x, n, c), n, c);
    }

    /** dx = y ⊙ (dy − Σ dy·y) from the softmax output y itself, as {@link Backend#softmaxBackward} takes it. */
    public static double[] softmaxBackwardFromOutput(double[] dy, double[] y, int n, int c) {
        double[] dx = new double[n * c];
        for (int r = 0; r < n; r++) {
            double dot = 0;
            for (int j = 0; j < c; j++) {
                dot += dy[r * c + j] * y[r * c + j];
            }
            for (int j = 0; j < c; j++) {
                dx[r * c + j] = y[r * c + j] * (dy[r * c + j] - dot);
            }
        }
        return dx;
    }

    /** Returns {out[N·C], mean[N], rstd[N]}. */
    public static double[][] layerNorm(double[] x, double[] w, double[] b, int n, int c, double eps) {
        double[] out = new double[n * c];
        double[] mean = new double[n];
        double[] rstd = new double[n];
        for (int r = 0; r < n; r++) {
            double s = 0;
            for (int j = 0; j < c; j++) {
                s += x[r * c + j];
            }
            double mu = s / c;
            double v = 0;
            for (int j = 0; j < c; j++) {
                v += (x[r * c + j] - mu) * (x[r * c + j] - mu);
            }
            double rs = 1 / Math.sqrt(v / c + eps);
            for (int j = 0; j < c; j++) {
                out[r * c + j] = (x[r * c + j] - mu) * rs * w[j] + b[j];
            }
            mean[r] = mu;
            rstd[r] = rs;
        }
        return new double[][] {out, mean, rstd};
    }

    /** Returns {dx[N·C], dweight[C], dbias[C]}. */
    public static double[][] layerNormBackward(double[] dy, double[] x, double[] w, int n, int c, double eps) {
        double[][] fwd = layerNorm(x, w, new double[c], n, c, eps);
        return layerNormBackward(dy, x, w, fwd[1], fwd[2], n, c);
    }

    /** Returns {dx[N·C], dweight[C], dbias[C]} from the statistics the forward saved, as {@link Backend#layerNormBackward} takes them. */
    public static double[][] layerNormBackward(double[] dy, double[] x, double[] w, double[] mean, double[] rstd, int n,
                                               int c) {
        double[] dx = new double[n * c];
        double[] dw = new double[c];
        double[] db = new double[c];
        for (int r = 0; r < n; r++) {
            double mu = mean[r];
            double rs = rstd[r];
            double meanDn = 0;
            double meanDnX = 0;
            for (int j = 0; j < c; j++) {
                double xhat = (x[r * c + j] - mu) * rs;
                double dn = w[j] * dy[r * c + j];
                meanDn += dn / c;
                meanDnX += dn * xhat / c;
                dw[j] += dy[r * c + j] * xhat;
                db[j] += dy[r * c + j];
            }
            for (int j = 0; j < c; j++) {
                double xhat = (x[r * c + j] - mu) * rs;
                dx[r * c + j] = (w[j] * dy[r * c + j] - meanDn - xhat * meanDnX) * rs;
            }
        }
        return new double[][] {dx, dw, db};
    }

    /** Returns {out[N·C], rstd[N]}. */
    public static double[][] rmsNorm(double[] x, double[] w, int n, int c, double eps) {
        double[] out = new double[n * c];
        double[] rstd = new double[n];
        for (int r = 0; r < n; r++) {
            double ss = 0;
            for (int j = 0; j < c; j++) {
                ss += x[r * c + j] * x[r * c + j];
            }
            double rs = 1 / Math.sqrt(ss / c + eps);
            for (int j = 0; j < c; j++) {
                out[r * c + j] = x[r * c + j] * rs * w[j];
            }
            rstd[r] = rs;
        }
        return new double[][] {out, rstd};
    }

    /** Returns {dx[N·C], dweight[C]}. */
    public static double[][] rmsNormBackward(double[] dy, double[] x, double[] w, int n, int c, double eps) {
        return rmsNormBackward(dy, x, w, rmsNorm(x, w, n, c, eps)[1], n, c);
    }

    /** Returns {dx[N·C], dweight[C]} from the rstd the forward saved, as {@link Backend#rmsNormBackward} takes it. */
    public static double[][] rmsNormBackward(double[] dy, double[] x, double[] w, double[] rstd, int n, int c) {
        double[] dx = new double[n * c];
        double[] dw = new double[c];
        for (int r = 0; r < n; r++) {
            double rs = rstd[r];
            double meanDnX = 0;
            for (int j = 0; j < c; j++) {
                double xhat = x[r * c + j] * rs;
                meanDnX += w[j] * dy[r * c + j] * xhat / c;
                dw[j] += dy[r * c + j] * xhat;
            }
            for (int j = 0; j < c; j++) {
                double xhat = x[r * c + j] * rs;
                dx[r * c + j] = (w[j] * dy[r * c + j] - xhat * meanDnX) * rs;
            }
        }
        return new double[][] {dx, dw};
    }

    /** √(2/π), the tanh-GELU scale. */
    public static final double GELU_SCALE = Math.sqrt(2 / Math.PI);

    /** 0.044715, the cubic coefficient inside the tanh-GELU. */
    public static final double GELU_CUBE = 0.044715;

    /** GELU, tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))). */
    public static double[] gelu(double[] x) {
        double[] out = new double[x.length];
        for (int i = 0; i < x.length; i++) {
            double v = x[i];
            out[i] = 0.5 * v * (1 + Math.tanh(GELU_SCALE * (v + GELU_CUBE * v * v * v)));
        }
        return out;
    }

    public static double[] geluBackward(double[] dy, double[] x) {
        double[] dx = new double[x.length];
        for (int i = 0; i < x.length; i++) {
            double v = x[i];
            double th = Math.tanh(GELU_SCALE * (v + GELU_CUBE * v * v * v));
            double d = 0.5 * (1 + th) + 0.5 * v * (1 - th * th) * GELU_SCALE * (1 + 3 * GELU_CUBE * v * v);
            dx[i] = d * dy[i];
        }
        return dx;
    }

    public static double[] embedding(int[] ids, double[] table, int c) {
        double[] out = new double[ids.length * c];
        for (int r = 0; r < ids.length; r++) {
            for (int j = 0; j < c; j++) {
                out[r * c + j] = table[ids[r] * c + j];
            }
        }
        return out;
    }

    /** dtable[V·C] from dout[N·C]. */
    public static double[] embeddingBackward(double[] dout, int[] ids, int vocab, int c) {
        double[] dt = new double[vocab * c];
        for (int r = 0; r < ids.length; r++) {
            for (int j = 0; j < c; j++) {
                dt[ids[r] * c + j] += dout[r * c + j];
            }
        }
        return dt;
    }

    /** Per-row losses[N]; 0 where the target is {@code ignoreIndex}. */
    public static double[] crossEntropy(double[] logits, int[] targets, int n, int v, int ignoreIndex) {
        double[] loss = new double[n];
        double[] p = softmax(logits, n, v);
        for (int r = 0; r < n; r++) {
            loss[r] = targets[r] == ignoreIndex ? 0 : -Math.log(p[r * v + targets[r]]);
        }
        return loss;
    }

    /** dlogits[N·V] = (softmax − onehot)·scale; zero rows where the target is ignored. */
    public static double[] crossEntropyBackward(double[] logits, int[] targets, int n, int v, int ignoreIndex,
                                                double scale) {
        double[] p = softmax(logits, n, v);
        double[] d = new double[n * v];
        for (int r = 0; r < n; r++) {
            if (targets[r] == ignoreIndex) {
                continue;
            }
            for (int j = 0; j < v; j++) {
                d[r * v + j] = (p[r * v + j] - (j == targets[r] ? 1 : 0)) * scale;
            }
        }
        return d;
    }

    /** Returns {params, m, v} after one AdamW step (PyTorch's update order). */
    public static double[][] adamW(double[] params, double[] grads, double[] m, double[] v, AdamW s) {
        int n = params.length;
        double[] po = new double[n];
        double[] mo = new double[n];
        double[] vo = new double[n];
        double bc1 = 1 - Math.pow(s.beta1(), s.step());
        double bc2 = 1 - Math.pow(s.beta2(), s.step());
        for (int i = 0; i < n; i++) {
            double g = grads[i] * s.gradScale();
            mo[i] = s.beta1() * m[i] + (1 - (double) s.beta1()) * g;
            vo[i] = s.beta2() * v[i] + (1 - (double) s.beta2()) * g * g;
            double update = (mo[i] / bc1) / (Math.sqrt(vo[i] / bc2) + s.eps());
            po[i] = params[i] * (1 - (double) s.lr() * s.weightDecay()) - s.lr() * update;
        }
        return new double[][] {po, mo, vo};
    }

    /**
     * Attention with materialized scores in double: returns {out[Tq·NH·HS], lse[NH·Tq]} for packed
     * q[Tq, NH, HS], k and v[Tk, NKV, HS]. A query that attends no key gets out 0 and lse −∞.
     */
    public static double[][] attention(Attention a, double[] q, double[] k, double[] v, int[] cuQ, int[] cuK) {
        int nh = a.heads();
        int hs = a.headDim();
        int nkv = a.kvHeads();
        int totalQ = cuQ[cuQ.length - 1];
        double[] out = new double[totalQ * nh * hs];
        double[] lse = new double[nh * totalQ];
        for (int b = 0; b + 1 < cuQ.length; b++) {
            int lq = cuQ[b + 1] - cuQ[b];
            int lk = cuK[b + 1] - cuK[b];
            for (int h = 0; h < nh; h++) {
                int g = h / a.group();
                for (int i = 0; i < lq; i++) {
                    int qi = ((cuQ[b] + i) * nh + h) * hs;
                    double[] p = scores(a, q, qi, k, cuK[b], g, nkv, i, lq, lk);
                    lse[h * totalQ + cuQ[b] + i] = softmaxInPlace(p);
                    for (int j = 0; j < lk; j++) {
                        int vj = ((cuK[b] + j) * nkv + g) * hs;
                        for (int d = 0; d < hs; d++) {
                            out[qi + d] += p[j] * v[vj + d];
                        }
                    }
                }
            }
        }
        return new double[][] {out, lse};
    }

    /** Replaces scores by their softmax and returns the log-sum-exp; a row of all −∞ becomes zeros with lse −∞. */
    private static double softmaxInPlace(double[] p) {
        double max = Double.NEGATIVE_INFINITY;
        for (double s : p) {
            max = Math.max(max, s);
        }
        if (max == Double.NEGATIVE_INFINITY) {
            java.util.Arrays.fill(p, 0);
            return max;
        }
        double sum = 0;
        for (int j = 0; j < p.length; j++) {
            p[j] = Math.exp(p[j] - max);
            sum += p[j];
        }
        for (int j = 0; j < p.length; j++) {
            p[j] /= sum;
        }
        return max + Math.log(sum);
    }

    /** Scaled scores of query row qi against every key of a sequence; −∞ where not attended. */
    private static double[] scores(Attention a, double[] q, int qi, double[] k, int k0, int g, int nkv, int i, int lq, int lk) {
        int hs = a.headDim();
        double[] s = new double[lk];
        for (int j = 0; j < lk; j++) {
            if (!a.attends(i, j, lq, lk)) {
                s[j] = Double.NEGATIVE_INFINITY;
                continue;
            }
            int kj = ((k0 + j) * nkv + g) * hs;
            double dot = 0;
            for (int d = 0; d < hs; d++) {
                dot += q[qi + d] * k[kj + d];
            }
            s[j] = a.softmaxScale() * dot;
        }
        return s;
    }

    /** Gradients of {@link #attention} for upstream dout: returns {dq, dk, dv} shaped like q, k, v. */
    public static double[][] attentionBackward(Attention a, double[] dout, double[] q, double[] k, double[] v, int[] cuQ,
                                               int[] cuK) {
        int nh = a.heads();
        int hs = a.headDim();
        int nkv = a.kvHeads();
        double[] dq = new double[q.length];
        double[] dk = new double[k.length];
        double[] dv = new double[v.length];
        for (int b = 0; b + 1 < cuQ.length; b++) {
            int lq = cuQ[b + 1] - cuQ[b];
            int lk = cuK[b + 1] - cuK[b];
            for (int h = 0; h < nh; h++) {
                int g = h / a.group();
                for (int i = 0; i < lq; i++) {
                    int qi = ((cuQ[b] + i) * nh + h) * hs;
                    double[] p = scores(a, q, qi, k, cuK[b], g, nkv, i, lq, lk);
                    if (softmaxInPlace(p) == Double.NEGATIVE_INFINITY) {
                        continue;
                    }
                    double[] dp = new double[lk];
                    double rowDot = 0;
                    for (int j = 0; j < lk; j++) {
                        int vj = ((cuK[b] + j) * nkv + g) * hs;
                        for (int d = 0; d < hs; d++) {
                            dp[j] += dout[qi + d] * v[vj + d];
                        }
                        rowDot += p[j] * dp[j];
                    }
                    for (int j = 0; j < lk; j++) {
                        if (p[j] == 0) {
                            continue;
                        }
                        double ds = p[j] * (dp[j] - rowDot) * a.softmaxScale();
                        int kj = ((cuK[b] + j) * nkv + g) * hs;
                        for (int d = 0; d < hs; d++) {
                            dq[qi + d] += ds * k[kj + d];
                            dk[kj + d] += ds * q[qi + d];
                            dv[kj + d] += p[j] * dout[qi + d];
                        }
                    }
                }
            }
        }
        return new double[][] {dq, dk, dv};
    }

    /** x ⊙ keep / (1 − p). */
    public static double[] dropout(double[] x, float p, long seed) {
        double[] out = new double[x.length];
        for (int i = 0; i < x.length; i++) {
            out[i] = DropoutMask.keeps(seed, i, p) ? x[i] / (1.0 - p) : 0;
        }
        return out;
    }

    // ---- linear attention ----

    /**
     * Causal linear attention in its quadratic form, for packed q, k [T, NH·F] and v [T, NH·D]:
     * out[t] = Σ_{j≤t} (q_t·k_j) v_j / (Σ_{j≤t} q_t·k_j + eps) per head, within each sequence.
     */
    public static double[] linearAttention(LinearAttention l, double[] q, double[] k, double[] v, double eps) {
        int nh = l.heads();
        int f = l.features();
        int d = l.headDim();
        double[] out = new double[l.tokens() * nh * d];
        for (int b = 0; b < l.sequences(); b++) {
            for (int h = 0; h < nh; h++) {
                for (int t = l.cu()[b]; t < l.cu()[b + 1]; t++) {
                    double den = eps;
                    double[] num = new double[d];
                    for (int j = l.cu()[b]; j <= t; j++) {
                        double s = dot(q, (t * nh + h) * f, k, (j * nh + h) * f, f);
                        den += s;
                        for (int e = 0; e < d; e++) {
                            num[e] += s * v[(j * nh + h) * d + e];
                        }
                    }
                    for (int e = 0; e < d; e++) {
                        out[(t * nh + h) * d + e] = num[e] / den;
                    }
                }
            }
        }
        return out;
    }

    /**
     * Gradients of {@link #linearAttention} for upstream dout: {dq, dk, dv}. With n_t the
     * denominator, u_t = dout_t / n_t and c_t = −dout_t·out_t / n_t, each score s_tj = q_t·k_j
     * (j ≤ t) gets ds_tj = v_j·u_t + c_t, so dq_t += ds_tj k_j, dk_j += ds_tj q_t, dv_j += s_tj u_t.
     */
    public static double[][] linearAttentionBackward(LinearAttention l, double[] dout, double[] q, double[] k, double[] v,
                                                     double eps) {
        int nh = l.heads();
        int f = l.features();
        int d = l.headDim();
        double[] out = linearAttention(l, q, k, v, eps);
        double[] dq = new double[q.length];
        double[] dk = new double[k.length];
        double[] dv = new double[v.length];
        for (int b = 0; b < l.sequences(); b++) {
            for (int h = 0; h < nh; h++) {
                for (int t = l.cu()[b]; t < l.cu()[b + 1]; t++) {
                    int qt = (t * nh + h) * f;
                    int ot = (t * nh + h) * d;
                    double den = eps;
                    for (int j = l.cu()[b]; j <= t; j++) {
                        den += dot(q, qt, k, (j * nh + h) * f, f);
                    }
                    double c = -dot(dout, ot, out, ot, d) / den;
                    for (int j = l.cu()[b]; j <= t; j++) {
                        int kj = (j * nh + h) * f;
                        int vj = (j * nh + h) * d;
                        double s = dot(q, qt, k, kj, f);
                        double ds = dot(v, vj, dout, ot, d) / den + c;
                        for (int e = 0; e < f; e++) {
                            dq[qt + e] += ds * k[kj + e];
                            dk[kj + e] += ds * q[qt + e];
                        }
                        for (int e = 0; e < d; e++) {
                            dv[vj + e] += s * dout[ot + e] / den;
                        }
                    }
                }
            }
        }
        return new double[][] {dq, dk, dv};
    }

    /**
     * The recurrent form over the t tokens of one sequence: per head, state[F, D] += k vᵀ and
     * norm[F] += k for each token, then out = qᵀ·state / (q·norm + eps). Returns {out, state, norm}.
     */
    public static double[][] linearAttentionStep(LinearAttention l, double[] state, double[] norm, double[] q, double[] k,
                                                 double[] v, double eps) {
        int nh = l.heads();
        int f = l.features();
        int d = l.headDim();
        double[] s = state.clone();
        double[] z = norm.clone();
        double[] out = new double[l.tokens() * nh * d];
        for (int t = 0; t < l.tokens(); t++) {
            for (int h = 0; h < nh; h++) {
                int qt = (t * nh + h) * f;
                int vt = (t * nh + h) * d;
                for (int a = 0; a < f; a++) {
                    z[h * f + a] += k[qt + a];
                    for (int e = 0; e < d; e++) {
                        s[(h * f + a) * d + e] += k[qt + a] * v[vt + e];
                    }
                }
                double den = eps + dot(q, qt, z, h * f, f);
                for (int e = 0; e < d; e++) {
                    double num = 0;
                    for (int a = 0; a < f; a++) {
                        num += q[qt + a] * s[(h * f + a) * d + e];
                    }
                    out[vt + e] = num / den;
                }
            }
        }
        return new double[][] {out, s, z};
    }

    private static double dot(double[] a, int ao, double[] b, int bo, int n) {
        double s = 0;
        for (int i = 0; i < n; i++) {
            s += a[ao + i] * b[bo + i];
        }
        return s;
    }

    // ---- causal long convolution (S4D, H3) ----

    /** y[T, C] of {@link Backend#causalConvForward}: the direct sum per sequence and channel, taps beyond L = k.length / c zero. */
    public static double[] causalConv(double[] u, double[] k, int[] cu, int c) {
        double[] y = new double[u.length];
        int l = k.length / c;
        for (int s = 0; s + 1 < cu.length; s++) {
            int len = cu[s + 1] - cu[s];
            for (int ch = 0; ch < c; ch++) {
                for (int t = 0; t < len; t++) {
                    double acc = 0;
                    for (int j = 0; j <= Math.min(t, l - 1); j++) {
                        acc += k[j * c + ch] * u[(cu[s] + t - j) * c + ch];
                    }
                    y[(cu[s] + t) * c + ch] = acc;
                }
            }
        }
        return y;
    }

    /**
     * {du[T, C], dk[L, C]} of {@link #causalConv} for upstream dy, with L = k.length / c:
     * du[t] = Σ_{t ≤ s &lt; t + L} k[s − t]·dy[s] and dk[j] = Σ over sequences of Σ_{t ≥ j} dy[t]·u[t − j] (j &lt; L).
     */
    public static double[][] causalConvBackward(double[] dy, double[] u, double[] k, int[] cu, int c) {
        double[] du = new double[u.length];
        double[] dk = new double[k.length];
        int l = k.length / c;
        for (int s = 0; s + 1 < cu.length; s++) {
            int base = cu[s];
            int len = cu[s + 1] - base;
            for (int ch = 0; ch < c; ch++) {
                for (int t = 0; t < len; t++) {
                    for (int j = 0; j <= Math.min(t, l - 1); j++) {
                        double g = dy[(base + t) * c + ch];
                        du[(base + t - j) * c + ch] += k[j * c + ch] * g;
                        dk[j * c + ch] += u[(base + t - j) * c + ch] * g;
                    }
                }
            }
        }
        return new double[][] {du, dk};
    }

    // ---- diagonal state-space convolution (S4D, H3's diagonal SSM) ----

    /** A complex number, for the state-space twins below. */
    private record Z(double re, double im) {
        static Z polar(double mag, double arg) {
            return new Z(mag * Math.cos(arg), mag * Math.sin(arg));
        }

        Z plus(Z o) {
            return new Z(re + o.re, im + o.im);
        }

        Z minus(Z o) {
            return new Z(re - o.re, im - o.im);
        }

        Z times(Z o) {
            return new Z(re * o.re - im * o.im, re * o.im + im * o.re);
        }

        Z times(double s) {
            return new Z(re * s, im * s);
        }

        Z over(Z o) {
            double d = o.re * o.re + o.im * o.im;
            return new Z((re * o.re + im * o.im) / d, (im * o.re - re * o.im) / d);
        }
    }

    /**
     * K[L, C] of {@link Backend#ssmConvForward} by the definition, for L = lags:
     * K[j, ch] = 2·Re(Σ_n w_n·exp(j·dt·A_n)), each power taken directly rather than by repeated products.
     */
    public static double[] ssmKernel(double[] logDt, double[] aRe, double[] aIm, double[] c, int channels, int lags) {
        int modes = aRe.length / channels;
        double[] k = new double[lags * channels];
        for (int ch = 0; ch < channels; ch++) {
            double dt = Math.exp(logDt[ch]);
            for (int n = 0; n < modes; n++) {
                int i = ch * modes + n;
                double[] m = Ssm.zoh(dt, aRe[i], aIm[i], c[2 * i], c[2 * i + 1]);
                Z w = new Z(m[4], m[5]);
                for (int j = 0; j < lags; j++) {
                    Z p = Z.polar(Math.exp(-j * dt * Math.exp(aRe[i])), j * dt * aIm[i]);
                    k[j * channels + ch] += 2 * w.times(p).re();
                }
            }
        }
        return k;
    }

    private static int longest(int[] cu) {
        int max = 0;
        for (int s = 0; s + 1 < cu.length; s++) {
            max = Math.max(max, cu[s + 1] - cu[s]);
        }
        return max;
    }

    /** y[T, C] of {@link Backend#ssmConvForward}: the kernel by the definition, then the direct convolution. */
    public static double[] ssmConv(double[] u, double[] logDt, double[] aRe, double[] aIm, double[] c, int[] cu,
                                   int channels) {
        return causalConv(u, ssmKernel(logDt, aRe, aIm, c, channels, longest(cu)), cu, channels);
    }

    /**
     * {du, dlogDt, daRe, daIm, dc} of {@link #ssmConv} for upstream dy: du and dK by
     * {@link #causalConvBackward}, then each K[j] = 2·Re(w·Ā^j) differentiated along each parameter,
     * with Ā^j = exp(j·dt·A), w = C̃·(Ā − 1)/A and A = −exp(aRe) + i·aIm (holomorphic in C̃, A and dt,
     * so d Re(f)/dx = Re(df/dx) for a real parameter x, and i·df/dz for an imaginary part).
     */
    public static double[][] ssmConvBackward(double[] dy, double[] u, double[] logDt, double[] aRe, double[] aIm,
                                             double[] c, int[] cu, int channels) {
        int modes = aRe.length / channels;
        int lags = longest(cu);
        double[][] g = causalConvBackward(dy, u, ssmKernel(logDt, aRe, aIm, c, channels, lags), cu, channels);
        double[] dk = g[1];
        double[] dLogDt = new double[logDt.length];
        double[] dRe = new double[aRe.length];
        double[] dIm = new double[aIm.length];
        double[] dc = new double[c.length];
        for (int ch = 0; ch < channels; ch++) {
            double dt = Math.exp(logDt[ch]);
            for (int n = 0; n < modes; n++) {
                int i = ch * modes + n;
                Z a = new Z(-Math.exp(aRe[i]), aIm[i]);
                Z ct = new Z(c[2 * i], c[2 * i + 1]);
                Z bar = Z.polar(Math.exp(dt * a.re()), dt * a.im());
                Z q = bar.minus(new Z(1, 0)).over(a);
                Z w = ct.times(q);
                // dw/dA = C̃·(dt·Ā·A − (Ā − 1))/A², dw/ddt = C̃·Ā.
                Z dwdA = ct.times(bar.times(a).times(dt).minus(bar.minus(new Z(1, 0)))).over(a.times(a));
                Z dwdDt = ct.times(bar);
                for (int j = 0; j < lags; j++) {
                    double gk = 2 * dk[j * channels + ch];
                    Z p = Z.polar(Math.exp(j * dt * a.re()), j * dt * a.im());
                    Z dA = dwdA.times(p).plus(w.times(p).times(j * dt));
                    Z dDt = dwdDt.times(p).plus(w.times(p).times(a).times(j));
                    Z dC = q.times(p);
                    dc[2 * i] += gk * dC.re();
                    dc[2 * i + 1] -= gk * dC.im();
                    dRe[i] += gk * dA.re() * a.re();
                    dIm[i] -= gk * dA.im();
                    dLogDt[ch] += gk * dDt.re() * dt;
                }
            }
        }
        return new double[][] {g[0], dLogDt, dRe, dIm, dc};
    }

    /**
     * {y[t, C], state'} of {@link Backend#ssmStep}: per channel and mode x ← Ā·x + u_t, then
     * y_t = 2·Re(Σ_n w_n·x_n), from state [C, N, 2].
     */
    public static double[][] ssmStep(double[] state, double[] u, double[] logDt, double[] aRe, double[] aIm,
                                     double[] c, int channels) {
        int modes = aRe.length / channels;
        int tokens = u.length / channels;
        double[] x = state.clone();
        double[] y = new double[u.length];
        for (int ch = 0; ch < channels; ch++) {
            double dt = Math.exp(logDt[ch]);
            for (int n = 0; n < modes; n++) {
                int i = ch * modes + n;
                double[] m = Ssm.zoh(dt, aRe[i], aIm[i], c[2 * i], c[2 * i + 1]);
                Z bar = new Z(m[0], m[1]);
                Z w = new Z(m[4], m[5]);
                Z xi = new Z(x[2 * i], x[2 * i + 1]);
                for (int t = 0; t < tokens; t++) {
                    xi = bar.times(xi).plus(new Z(u[t * channels + ch], 0));
                    y[t * channels + ch] += 2 * w.times(xi).re();
                }
                x[2 * i] = xi.re();
                x[2 * i + 1] = xi.im();
            }
        }
        return new double[][] {y, x};
    }

    // ---- feature maps: unary backward, FAVOR+ ----

    /** dx = dy·f′(x) of {@link Backend#unaryBackward}. */
    public static double[] unaryBackward(UnaryOp op, double[] dy, double[] x) {
        double[] dx = new double[x.length];
        for (int i = 0; i < x.length; i++) {
            dx[i] = dy[i] * op.derivative(x[i]);
        }
        return dx;
    }

    /** w_i·x_h for every feature i of row-head r (x_h at x[r·D]): the exponent before shifts. */
    private static double[] favorLogits(FavorFeatures f, double[] x, int r, double[] w) {
        int d = f.headDim();
        double[] a = new double[f.features()];
        for (int i = 0; i < a.length; i++) {
            a[i] = dot(w, i * d, x, r * d, d);
        }
        return a;
    }

    /** The first index of the largest value: the query stabiliser's argmax. */
    private static int argmax(double[] a) {
        int best = 0;
        for (int i = 1; i < a.length; i++) {
            if (a[i] > a[best]) {
                best = i;
            }
        }
        return best;
    }

    /** out[T, NH·M] of {@link Backend#favorFeatures}. */
    public static double[] favorFeatures(FavorFeatures f, double[] x, double[] w, boolean query) {
        int d = f.headDim();
        int m = f.features();
        double[] out = new double[f.tokens() * f.heads() * m];
        double scale = 1 / Math.sqrt(m);
        for (int r = 0; r < f.tokens() * f.heads(); r++) {
            double[] a = favorLogits(f, x, r, w);
            double shift = dot(x, r * d, x, r * d, d) / 2 + (query ? a[argmax(a)] : 0);
            for (int i = 0; i < m; i++) {
                out[r * m + i] = Math.exp(a[i] - shift) * scale;
            }
        }
        return out;
    }

    /**
     * dx of {@link #favorFeatures} for upstream dout: with g_i = dout_i·out_i,
     * dx_h = Σ_i g_i·(w_i − x_h) − (Σ_i g_i)·w_{i*} for queries (i* the argmax), without the last
     * term for keys.
     */
    public static double[] favorFeaturesBackward(FavorFeatures f, double[] dout, double[] x, double[] w, boolean query) {
        int d = f.headDim();
        int m = f.features();
        double[] out = favorFeatures(f, x, w, query);
        double[] dx = new double[x.length];
        for (int r = 0; r < f.tokens() * f.heads(); r++) {
            double total = 0;
            for (int i = 0; i < m; i++) {
                double g = dout[r * m + i] * out[r * m + i];
                total += g;
                for (int j = 0; j < d; j++) {
                    dx[r * d + j] += g * w[i * d + j];
                }
            }
            int star = query ? argmax(favorLogits(f, x, r, w)) : -1;
            for (int j = 0; j < d; j++) {
                dx[r * d + j] -= total * (x[r * d + j] + (query ? w[star * d + j] : 0));
            }
        }
        return dx;
    }

    // ---- grouped GEMM (dropless mixture of experts) ----

    /**
     * The new c of {@link Backend#groupedGemm}: {@link #gemm} once per group over that group's
     * rows and expert matrix; c is read for beta, and parts no group writes keep their values.
     */
    public static double[] groupedGemm(GroupedGemm gg, double[] c, double[] a, double[] b) {
        double[] out = c.clone();
        for (int e = 0; e < gg.experts(); e++) {
            if (!gg.runs(e)) {
                continue;
            }
            int oc = gg.cStart(e);
            double[] r = gemm(gg.group(e), c, oc, a, gg.aStart(e), b, gg.bStart(e));
            System.arraycopy(r, 0, out, oc, r.length);
        }
        return out;
    }

    /** The new C [M, N] (packed) of {@link Backend#brgemm}: beta·C + alpha·Σᵢ op(Aᵢ)·op(Bᵢ), each pair at offset 0. */
    public static double[] brgemm(Gemm g, double[] c, int oc, double[][] a, double[][] b) {
        double[] out = new double[g.m() * g.n()];
        for (int i = 0; i < g.m(); i++) {
            for (int j = 0; j < g.n(); j++) {
                out[i * g.n() + j] = g.beta() == 0f ? 0 : (double) g.beta() * c[oc + i * g.ldc() + j];
            }
        }
        Gemm sum = g.scaled(g.alpha(), 0f);
        for (int p = 0; p < a.length; p++) {
            double[] r = gemm(sum, c, oc, a[p], 0, b[p], 0);
            for (int e = 0; e < r.length; e++) {
                out[e] += r[e];
            }
        }
        return out;
    }

    /** y [T, rows] = x [T, cols]·Wᵀ of {@link Backend#blockSparseLinear}, through the densified W. */
    public static double[] blockSparseLinear(BlockLayout l, double[] x, double[] w) {
        int t = x.length / l.cols();
        return gemm(Gemm.of(false, true, t, l.rows(), l.cols()), new double[0], 0, x, 0, l.densify(w), 0);
    }

    /** dy·W [T, cols], the product {@link Backend#blockSparseLinearBackwardInput} adds to dx. */
    public static double[] blockSparseLinearBackwardInput(BlockLayout l, double[] dy, double[] w) {
        int t = dy.length / l.rows();
        return gemm(Gemm.of(false, false, t, l.cols(), l.rows()), new double[0], 0, dy, 0, l.densify(w), 0);
    }

    /** dyᵀ·x on the non-zero blocks, compressed [nnz, bs, bs]: what {@link Backend#blockSparseLinearBackwardWeight} adds. */
    public static double[] blockSparseLinearBackwardWeight(BlockLayout l, double[] dy, double[] x) {
        int t = dy.length / l.rows();
        double[] dense = gemm(Gemm.of(true, false, l.rows(), l.cols(), t), new double[0], 0, dy, 0, x, 0);
        int bs = l.blockSize();
        double[] out = new double[l.weightNumel()];
        for (int r = 0; r < l.rowBlocks(); r++) {
            for (int b = l.rowStart(r); b < l.rowStart(r + 1); b++) {
                for (int i = 0; i < bs; i++) {
                    for (int j = 0; j < bs; j++) {
                        out[(b * bs + i) * bs + j] = dense[(r * bs + i) * l.cols() + l.col(b) * bs + j];
                    }
                }
            }
        }
        return out;
    }

    /** xᵀ [C, N] of x [N, C]. */
    public static double[] transpose(double[] x, int n, int c) {
        double[] out = new double[x.length];
        for (int i = 0; i < n; i++) {
            for (int j = 0; j < c; j++) {
                out[j * n + i] = x[i * c + j];
            }
        }
        return out;
    }

    // ==== mixture-of-experts routing (dropless, MegaBlocks-style; see MoeRouting) ====

    /**
     * indices [T, k] of {@link Backend#topK} for scores x [T, E]: each row's expert ids fully sorted
     * by score descending, then id ascending, and the first k kept.
     */
    public static int[] topK(double[] x, int e, int k) {
        int t = x.length / e;
        int[] out = new int[t * k];
        for (int r = 0; r < t; r++) {
            Integer[] ids = new Integer[e];
            for (int j = 0; j < e; j++) {
                TopK.checkScore(x[r * e + j], r, j);
                ids[j] = j;
            }
            int row = r;
            Arrays.sort(ids, (a, b) -> {
                int byScore = Double.compare(x[row * e + b] + 0.0, x[row * e + a] + 0.0);
                return byScore != 0 ? byScore : Integer.compare(a, b);
            });
            for (int j = 0; j < k; j++) {
                out[r * k + j] = ids[j];
            }
        }
        return out;
    }

    /** offsets [E + 1] of {@link Backend#expertOffsets}: entries with an id below e, for each e. */
    public static int[] expertOffsets(int[] indices, int experts) {
        int[] out = new int[experts + 1];
        for (int e = 0; e <= experts; e++) {
            for (int id : indices) {
                if (id < e) {
                    out[e]++;
                }
            }
        }
        return out;
    }

    /** order of {@link Backend#permutation}: expert by expert, that expert's entries in index order. */
    public static int[] permutation(int[] indices, int experts) {
        int[] out = new int[indices.length];
        int j = 0;
        for (int e = 0; e < experts; e++) {
            for (int i = 0; i < indices.length; i++) {
                if (indices[i] == e) {
                    out[j++] = i;
                }
            }
        }
        return out;
    }

    /** out [N, C] of {@link Backend#gatherRows}: row i is x's row rows[i], or zeros where rows[i] = −1. */
    public static double[] gatherRows(double[] x, int c, int[] rows) {
        double[] out = new double[rows.length * c];
        for (int i = 0; i < rows.length; i++) {
            if (rows[i] == -1) {
                continue;
            }
            System.arraycopy(x, rows[i] * c, out, i * c, c);
        }
        return out;
    }

    /**
     * What {@link Backend#scatterAddRows} adds to an [R, C] out: Σ_{i: rows[i] = r} w_i·x[i];
     * weights null = 1; rows[i] = −1 adds nothing.
     */
    public static double[] scatterAddRows(double[] x, int c, int[] rows, double[] weights, int denseRows) {
        double[] out = new double[denseRows * c];
        for (int i = 0; i < rows.length; i++) {
            if (rows[i] == -1) {
                continue;
            }
            double w = weights == null ? 1 : weights[i];
            for (int j = 0; j < c; j++) {
                out[rows[i] * c + j] += w * x[i * c + j];
            }
        }
        return out;
    }

    // ==== mixture-of-experts capacity, gates and router gradients (Switch-style; see MoeRouting) ====

    /** rows of {@link Backend#entryTokens}: entry / k, −1 kept. */
    public static int[] entryTokens(int[] entries, int k) {
        int[] out = new int[entries.length];
        for (int i = 0; i < entries.length; i++) {
            out[i] = entries[i] == -1 ? -1 : entries[i] / k;
        }
        return out;
    }

    /** slots [E·capacity] of {@link Backend#capacitySlots}: each expert's first capacity entries, then −1. */
    public static int[] capacitySlots(int[] order, int[] offsets, int capacity) {
        int experts = offsets.length - 1;
        int[] out = new int[experts * capacity];
        Arrays.fill(out, -1);
        for (int e = 0; e < experts; e++) {
            for (int i = offsets[e]; i < offsets[e + 1] && i - offsets[e] < capacity; i++) {
                out[e * capacity + i - offsets[e]] = order[i];
            }
        }
        return out;
    }

    /** out [N, C] of {@link Backend#scaleRows}: row i of x times s[i]. */
    public static double[] scaleRows(double[] x, double[] s, int c) {
        double[] out = new double[x.length];
        for (int i = 0; i < x.length; i++) {
            out[i] = s[i / c] * x[i];
        }
        return out;
    }

    /** The gradient [T, E] that {@link Backend#topKBackward} adds: dvalues [T, k] put back at their experts. */
    public static double[] topKBackward(double[] dvalues, int[] indices, int t, int e, int k) {
        double[] out = new double[t * e];
        for (int r = 0; r < t; r++) {
            for (int j = 0; j < k; j++) {
                out[r * e + indices[r * k + j]] += dvalues[r * k + j];
            }
        }
        return out;
    }

    /** out [n] of {@link Backend#uniformNoise}: {@link Noise#uniform} for each index. */
    public static double[] uniformNoise(int n, float lo, float hi, long seed) {
        double[] out = new double[n];
        for (int i = 0; i < n; i++) {
            out[i] = Noise.uniform(seed, i, lo, hi);
        }
        return out;
    }
}
