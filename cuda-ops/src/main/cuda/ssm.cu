// Causal long convolution and causal linear attention over packed variable-length sequences (CudaSsm).
// Every output element is summed by one thread in a fixed order, in double, so results are
// deterministic and within a rounding of the fp64 reference; no float atomics.

// The sequence owning packed row `row`: the largest s with cu[s] <= row (empty sequences are skipped
// because the next offset equals theirs).
__device__ __forceinline__ int ssm_sequence_of(const int* cu, int ocu, int sequences, int row) {
    int lo = 0;
    int hi = sequences - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (cu[ocu + mid] <= row) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    return lo;
}

// y[t, c] = Σ_{j ≤ min(t, taps − 1)} k[j, c]·u[t − j, c] within t's sequence; channels fastest, so loads coalesce.
extern "C" __global__ void causal_conv_forward_f32(float* y, int oy, const float* u, int ou, const float* k, int ok,
                                                  const int* cu, int ocu, int sequences, int tokens, int channels,
                                                  int taps) {
    GRID_STRIDE(i, (long long) tokens * channels) {
        int row = (int) (i / channels);
        int ch = (int) (i % channels);
        int t = row - cu[ocu + ssm_sequence_of(cu, ocu, sequences, row)];
        int last = min(t, taps - 1);
        double acc = 0;
        for (int j = 0; j <= last; j++) {
            acc += (double) k[ok + (long long) j * channels + ch] * u[ou + (long long) (row - j) * channels + ch];
        }
        y[oy + i] = (float) acc;
    }
}

// du[t, c] += Σ_{t ≤ q < min(end, t + taps)} k[q − t, c]·dy[q, c], q ascending.
extern "C" __global__ void causal_conv_backward_du_f32(float* du, int odu, const float* dy, int ody, const float* k,
                                                      int ok, const int* cu, int ocu, int sequences, int tokens,
                                                      int channels, int taps) {
    GRID_STRIDE(i, (long long) tokens * channels) {
        int row = (int) (i / channels);
        int ch = (int) (i % channels);
        int end = min(cu[ocu + ssm_sequence_of(cu, ocu, sequences, row) + 1], row + taps);
        double acc = 0;
        for (int q = row; q < end; q++) {
            acc += (double) k[ok + (long long) (q - row) * channels + ch] * dy[ody + (long long) q * channels + ch];
        }
        du[odu + i] = __fadd_rn(du[odu + i], (float) acc);
    }
}

// dk[j, c] += Σ over sequences in order of Σ_{j ≤ q < len} u[q − j, c]·dy[q, c], q ascending: one writer per tap.
extern "C" __global__ void causal_conv_backward_dk_f32(float* dk, int odk, const float* dy, int ody, const float* u,
                                                      int ou, const int* cu, int ocu, int sequences, int channels,
                                                      int taps) {
    GRID_STRIDE(i, (long long) taps * channels) {
        int j = (int) (i / channels);
        int ch = (int) (i % channels);
        double acc = 0;
        for (int s = 0; s < sequences; s++) {
            int base = cu[ocu + s];
            int end = cu[ocu + s + 1];
            for (int q = base + j; q < end; q++) {
                acc += (double) u[ou + (long long) (q - j) * channels + ch] * dy[ody + (long long) q * channels + ch];
            }
        }
        dk[odk + i] = __fadd_rn(dk[odk + i], (float) acc);
    }
}

// ---- causal linear attention ----
// One block per (head, sequence) walks the sequence in chunks of LA_CHUNK tokens. The state
// S = Σ k vᵀ lives in shared memory in double, augmented with a column D holding z = Σ k (the
// values' implicit 1), so the normaliser is one more column of every product. Within a chunk the
// scores P_ij = q_i·k_j (j ≤ i) are formed directly, and earlier chunks enter through S.

#define LA_CHUNK 16

struct LaShared {
    double* s;   // [F, D + 1]: the state (forward) or the reverse state R = Σ q Uᵀ (backward)
    double* p;   // [CH, CH]: scores q_i·k_j, j ≤ i
    double* w;   // [CH, CH]: score gradients (backward)
    double* u;   // [CH, D + 1]: numerators (forward) or U = (dout/n, c) (backward)
    float* q;    // [CH, F]
    float* k;    // [CH, F]
    float* v;    // [CH, D]
};

__device__ __forceinline__ LaShared la_shared(double* smem, int f, int d) {
    LaShared m;
    m.s = smem;
    m.p = m.s + f * (d + 1);
    m.w = m.p + LA_CHUNK * LA_CHUNK;
    m.u = m.w + LA_CHUNK * LA_CHUNK;
    m.q = (float*) (m.u + LA_CHUNK * (d + 1));
    m.k = m.q + LA_CHUNK * f;
    m.v = m.k + LA_CHUNK * f;
    return m;
}

// The value of token i's augmented column e: v_i[e], or 1 for the normaliser column.
__device__ __forceinline__ double la_v(const LaShared& m, int i, int e, int d) {
    return e < d ? (double) m.v[i * d + e] : 1.0;
}

__device__ void la_load(const LaShared& m, const float* q, int oq, const float* k, int ok, const float* v, int ov, int r0,
                        int rows, int h, int heads, int f, int d) {
    for (int x = threadIdx.x; x < rows * f; x += blockDim.x) {
        long long g = (long long) (r0 + x / f) * heads * f + h * f + x % f;
        m.q[x] = q[oq + g];
        m.k[x] = k[ok + g];
    }
    for (int x = threadIdx.x; x < rows * d; x += blockDim.x) {
        m.v[x] = v[ov + (long long) (r0 + x / d) * heads * d + h * d + x % d];
    }
}

__device__ void la_scores(const LaShared& m, int rows, int f) {
    for (int x = threadIdx.x; x < rows * rows; x += blockDim.x) {
        int i = x / rows;
        int j = x % rows;
        if (j <= i) {
            double acc = 0;
            for (int a = 0; a < f; a++) {
                acc += (double) m.q[i * f + a] * m.k[j * f + a];
            }
            m.p[i * LA_CHUNK + j] = acc;
        }
    }
}

// u[i, e] = Σ_a q_i[a]·S[a, e] + Σ_{j ≤ i} P_ij·v_j[e] for e ≤ D: the numerators, and at e = D the denominator less eps.
__device__ void la_numerators(const LaShared& m, int rows, int f, int d) {
    int da = d + 1;
    for (int x = threadIdx.x; x < rows * da; x += blockDim.x) {
        int i = x / da;
        int e = x % da;
        double acc = 0;
        for (int a = 0; a < f; a++) {
            acc += (double) m.q[i * f + a] * m.s[a * da + e];
        }
        for (int j = 0; j <= i; j++) {
            acc += m.p[i * LA_CHUNK + j] * la_v(m, j, e, d);
        }
        m.u[x] = acc;
    }
}

// S[a, e] += Σ_i k_i[a]·v_i[e] over the chunk's rows, i ascending.
__device__ void la_advance(const LaShared& m, int rows, int f, int d) {
    int da = d + 1;
    for (int x = threadIdx.x; x < f * da; x += blockDim.x) {
        int a = x / da;
        int e = x % da;
        double acc = m.s[x];
        for (int i = 0; i < rows; i++) {
            acc += (double) m.k[i * f + a] * la_v(m, i, e, d);
        }
        m.s[x] = acc;
    }
}

// Forward over packed sequences (cu set) or decoding of `tokens` tokens of one sequence (cu null) from
// and back into state [NH, F, D] and norm [NH, F] (state set; a null state starts from zero).
extern "C" __global__ void linear_attention_forward_f32(float* out, int oo, const float* q, int oq, const float* k, int ok,
                                                       const float* v, int ov, const int* cu, int ocu, int sequences,
                                                       int tokens, int heads, int f, int d, float eps, float* state,
                                                       int os, float* norm, int on) {
    extern __shared__ double la_smem[];
    LaShared m = la_shared(la_smem, f, d);
    int h = blockIdx.x;
    int da = d + 1;
    for (int b = blockIdx.y; b < sequences; b += gridDim.y) {
        int start = cu != nullptr ? cu[ocu + b] : 0;
        int end = cu != nullptr ? cu[ocu + b + 1] : tokens;
        for (int x = threadIdx.x; x < f * da; x += blockDim.x) {
            int a = x / da;
            int e = x % da;
            m.s[x] = state == nullptr ? 0.0
                    : e < d ? (double) state[os + ((long long) h * f + a) * d + e] : (double) norm[on + h * f + a];
        }
        __syncthreads();
        for (int r0 = start; r0 < end; r0 += LA_CHUNK) {
            int rows = min(LA_CHUNK, end - r0);
            la_load(m, q, oq, k, ok, v, ov, r0, rows, h, heads, f, d);
            __syncthreads();
            la_scores(m, rows, f);
            __syncthreads();
            la_numerators(m, rows, f, d);
            __syncthreads();
            for (int x = threadIdx.x; x < rows * d; x += blockDim.x) {
                int i = x / d;
                int e = x % d;
                out[oo + (long long) (r0 + i) * heads * d + h * d + e] = (float) (m.u[i * da + e] / (eps + m.u[i * da + d]));
            }
            la_advance(m, rows, f, d);
            __syncthreads();
        }
        if (state != nullptr) {
            for (int x = threadIdx.x; x < f * da; x += blockDim.x) {
                int a = x / da;
                int e = x % da;
                if (e < d) {
                    state[os + ((long long) h * f + a) * d + e] = (float) m.s[x];
                } else {
                    norm[on + h * f + a] = (float) m.s[x];
                }
            }
        }
        __syncthreads();
    }
}

// Backward: a forward walk recomputes the numerators, forms U_i = (dout_i/n_i, c_i) with
// c_i = −dout_i·out_i/n_i (kept in scratch [T, NH, D + 1]) and adds dq; a reverse walk with
// R = Σ_{later} q Uᵀ adds dk and dv. Score gradients are W_ij = Σ_{e ≤ D} v_j[e]·U_i[e] (v_j[D] = 1).
extern "C" __global__ void linear_attention_backward_f32(float* dq, int odq, float* dk, int odk, float* dv, int odv,
                                                        const float* dout, int odo, const float* q, int oq,
                                                        const float* k, int ok, const float* v, int ov, const int* cu,
                                                        int ocu, int sequences, int heads, int f, int d, float eps,
                                                        double* scratch) {
    extern __shared__ double la_smem[];
    LaShared m = la_shared(la_smem, f, d);
    int h = blockIdx.x;
    int da = d + 1;
    for (int b = blockIdx.y; b < sequences; b += gridDim.y) {
        int start = cu[ocu + b];
        int end = cu[ocu + b + 1];
        for (int x = threadIdx.x; x < f * da; x += blockDim.x) {
            m.s[x] = 0.0;
        }
        __syncthreads();
        for (int r0 = start; r0 < end; r0 += LA_CHUNK) {
            int rows = min(LA_CHUNK, end - r0);
            la_load(m, q, oq, k, ok, v, ov, r0, rows, h, heads, f, d);
            __syncthreads();
            la_scores(m, rows, f);
            __syncthreads();
            la_numerators(m, rows, f, d);
            __syncthreads();
            for (int i = threadIdx.x; i < rows; i += blockDim.x) {
                double* ui = m.u + i * da;
                const float* g = dout + odo + (long long) (r0 + i) * heads * d + h * d;
                double n = eps + ui[d];
                double dot = 0;
                for (int e = 0; e < d; e++) {
                    dot += (double) g[e] * (ui[e] / n);
                }
                double* keep = scratch + ((long long) (r0 + i) * heads + h) * da;
                for (int e = 0; e < d; e++) {
                    ui[e] = g[e] / n;
                    keep[e] = ui[e];
                }
                ui[d] = -dot / n;
                keep[d] = ui[d];
            }
            __syncthreads();
            for (int x = threadIdx.x; x < rows * rows; x += blockDim.x) {
                int i = x / rows;
                int j = x % rows;
                if (j <= i) {
                    double acc = 0;
                    for (int e = 0; e < da; e++) {
                        acc += la_v(m, j, e, d) * m.u[i * da + e];
                    }
                    m.w[i * LA_CHUNK + j] = acc;
                }
            }
            __syncthreads();
            // dq_i[a] += Σ_{e ≤ D} U_i[e]·S[a, e] + Σ_{j ≤ i} W_ij·k_j[a], S being the state before this chunk.
            for (int x = threadIdx.x; x < rows * f; x += blockDim.x) {
                int i = x / f;
                int a = x % f;
                double acc = 0;
                for (int e = 0; e < da; e++) {
                    acc += m.u[i * da + e] * m.s[a * da + e];
                }
                for (int j = 0; j <= i; j++) {
                    acc += m.w[i * LA_CHUNK + j] * m.k[j * f + a];
                }
                long long g = odq + (long long) (r0 + i) * heads * f + h * f + a;
                dq[g] = __fadd_rn(dq[g], (float) acc);
            }
            __syncthreads();
            la_advance(m, rows, f, d);
            __syncthreads();
        }
        for (int x = threadIdx.x; x < f * da; x += blockDim.x) {
            m.s[x] = 0.0;
        }
        __syncthreads();
        for (int r0 = start + (end - start - 1) / LA_CHUNK * LA_CHUNK; r0 >= start && end > start; r0 -= LA_CHUNK) {
            int rows = min(LA_CHUNK, end - r0);
            la_load(m, q, oq, k, ok, v, ov, r0, rows, h, heads, f, d);
            for (int x = threadIdx.x; x < rows * da; x += blockDim.x) {
                m.u[x] = scratch[((long long) (r0 + x / da) * heads + h) * da + x % da];
            }
            __syncthreads();
            la_scores(m, rows, f);
            for (int x = threadIdx.x; x < rows * rows; x += blockDim.x) {
                int i = x / rows;
                int j = x % rows;
                if (j <= i) {
                    double acc = 0;
                    for (int e = 0; e < da; e++) {
                        acc += la_v(m, j, e, d) * m.u[i * da + e];
                    }
                    m.w[i * LA_CHUNK + j] = acc;
                }
            }
            __syncthreads();
            // dk_j[a] += Σ_{e ≤ D} v_j[e]·R[a, e] + Σ_{i ≥ j} W_ij·q_i[a]; dv_j[e] += Σ_a k_j[a]·R[a, e] + Σ_{i ≥ j} P_ij·U_i[e].
            for (int x = threadIdx.x; x < rows * f; x += blockDim.x) {
                int j = x / f;
                int a = x % f;
                double acc = 0;
                for (int e = 0; e < da; e++) {
                    acc += la_v(m, j, e, d) * m.s[a * da + e];
                }
                for (int i = j; i < rows; i++) {
                    acc += m.w[i * LA_CHUNK + j] * m.q[i * f + a];
                }
                long long g = odk + (long long) (r0 + j) * heads * f + h * f + a;
                dk[g] = __fadd_rn(dk[g], (float) acc);
            }
            for (int x = threadIdx.x; x < rows * d; x += blockDim.x) {
                int j = x / d;
                int e = x % d;
                double acc = 0;
                for (int a = 0; a < f; a++) {
                    acc += (double) m.k[j * f + a] * m.s[a * da + e];
                }
                for (int i = j; i < rows; i++) {
                    acc += m.p[i * LA_CHUNK + j] * m.u[i * da + e];
                }
                long long g = odv + (long long) (r0 + j) * heads * d + h * d + e;
                dv[g] = __fadd_rn(dv[g], (float) acc);
            }
            __syncthreads();
            // R[a, e] += Σ_i q_i[a]·U_i[e], i ascending.
            for (int x = threadIdx.x; x < f * da; x += blockDim.x) {
                int a = x / da;
                int e = x % da;
                double acc = m.s[x];
                for (int i = 0; i < rows; i++) {
                    acc += (double) m.q[i * f + a] * m.u[i * da + e];
                }
                m.s[x] = acc;
            }
            __syncthreads();
        }
    }
}

// The least index of a negative or NaN feature into *bad (integer atomicMin: the result does not depend on order).
extern "C" __global__ void linear_attention_check_features_f32(const float* x, int ox, int n, int* bad) {
    GRID_STRIDE(i, n) {
        if (!(x[ox + i] >= 0.0f)) {
            atomicMin(bad, (int) i);
        }
    }
}

// ---- diagonal state-space convolution (S4D) ----
// The kernel K[j, c] = 2·Re(Σ_n w_n·Ā_n^j) is formed in double with each power taken directly (no
// repeated products, so no drift over long lags), then convolved by the causal-conv kernels above.

// Ssm.zoh: {Re Ā, Im Ā, Re q, Im q, Re w, Im w} with Ā = exp(dt·A), q = (Ā − 1)/A, w = C̃·q, A = −exp(aRe) + i·aIm.
__device__ void ssm_zoh(double dt, double aRe, double aIm, double cRe, double cIm, double* m) {
    double ar = -exp(aRe);
    double mag = exp(dt * ar);
    double br = mag * cos(dt * aIm);
    double bi = mag * sin(dt * aIm);
    double nr = br - 1;
    double den = ar * ar + aIm * aIm;
    double qr = (nr * ar + bi * aIm) / den;
    double qi = (bi * ar - nr * aIm) / den;
    m[0] = br;
    m[1] = bi;
    m[2] = qr;
    m[3] = qi;
    m[4] = cRe * qr - cIm * qi;
    m[5] = cRe * qi + cIm * qr;
}

// K[j, c] for j < lags, modes summed in order.
extern "C" __global__ void ssm_kernel_f32(float* kout, const float* logDt, int old, const float* aRe, int ore,
                                         const float* aIm, int oim, const float* c, int oc, int channels, int modes,
                                         int lags) {
    GRID_STRIDE(x, (long long) lags * channels) {
        int j = (int) (x / channels);
        int ch = (int) (x % channels);
        double dt = exp((double) logDt[old + ch]);
        double acc = 0;
        for (int n = 0; n < modes; n++) {
            int i = ch * modes + n;
            double m[6];
            double are = aRe[ore + i];
            double aim = aIm[oim + i];
            ssm_zoh(dt, are, aim, c[oc + 2 * i], c[oc + 2 * i + 1], m);
            double mag = exp(-j * dt * exp(are));
            double arg = j * dt * aim;
            double pr = mag * cos(arg);
            double pi = mag * sin(arg);
            acc += 2 * (m[4] * pr - m[5] * pi);
        }
        kout[x] = (float) acc;
    }
}

// The parameter gradients of one mode from dK [lags, C] (Reference.ssmConvBackward's formulas, lags
// ascending): dc, daRe, daIm += directly; the mode's share of dlogDt into part [C, N] for ssm_sum_modes.
extern "C" __global__ void ssm_param_grads_f32(float* daRe, int odre, float* daIm, int odim, float* dc, int odc,
                                              double* part, const float* dk, const float* logDt, int old,
                                              const float* aRe, int ore, const float* aIm, int oim, const float* c,
                                              int oc, int channels, int modes, int lags) {
    GRID_STRIDE(i, (long long) channels * modes) {
        int ch = (int) (i / modes);
        double dt = exp((double) logDt[old + ch]);
        double ar = -exp((double) aRe[ore + i]);
        double ai = aIm[oim + i];
        double cr = c[oc + 2 * i];
        double ci = c[oc + 2 * i + 1];
        double mag = exp(dt * ar);
        double br = mag * cos(dt * ai);
        double bi = mag * sin(dt * ai);
        // q = (Ā − 1)/A, w = C̃·q.
        double den = ar * ar + ai * ai;
        double qr = ((br - 1) * ar + bi * ai) / den;
        double qi = (bi * ar - (br - 1) * ai) / den;
        double wr = cr * qr - ci * qi;
        double wi = cr * qi + ci * qr;
        // dw/dA = C̃·(dt·Ā·A − (Ā − 1))/A².
        double tr = dt * (br * ar - bi * ai) - (br - 1);
        double ti = dt * (br * ai + bi * ar) - bi;
        double nr = cr * tr - ci * ti;
        double ni = cr * ti + ci * tr;
        double a2r = ar * ar - ai * ai;
        double a2i = 2 * ar * ai;
        double a2 = a2r * a2r + a2i * a2i;
        double gar = (nr * a2r + ni * a2i) / a2;
        double gai = (ni * a2r - nr * a2i) / a2;
        // dw/ddt = C̃·Ā.
        double gdr = cr * br - ci * bi;
        double gdi = cr * bi + ci * br;
        double sc = 0, sci = 0, sre = 0, sim = 0, sdt = 0;
        for (int j = 0; j < lags; j++) {
            double gk = 2 * (double) dk[(long long) j * channels + ch];
            double pm = exp(j * dt * ar);
            double pr = pm * cos(j * dt * ai);
            double pi = pm * sin(j * dt * ai);
            double wpr = wr * pr - wi * pi;
            double wpi = wr * pi + wi * pr;
            // dA = dwdA·p + w·p·j·dt; dDt = dwdDt·p + w·p·A·j; dC = q·p.
            double dar = gar * pr - gai * pi + wpr * j * dt;
            double dai = gar * pi + gai * pr + wpi * j * dt;
            double ddr = gdr * pr - gdi * pi + (wpr * ar - wpi * ai) * j;
            sc += gk * (qr * pr - qi * pi);
            sci -= gk * (qr * pi + qi * pr);
            sre += gk * dar * ar;
            sim -= gk * dai;
            sdt += gk * ddr * dt;
        }
        dc[odc + 2 * i] = __fadd_rn(dc[odc + 2 * i], (float) sc);
        dc[odc + 2 * i + 1] = __fadd_rn(dc[odc + 2 * i + 1], (float) sci);
        daRe[odre + i] = __fadd_rn(daRe[odre + i], (float) sre);
        daIm[odim + i] = __fadd_rn(daIm[odim + i], (float) sim);
        part[i] = sdt;
    }
}

// dlogDt[c] += Σ_n part[c, n], modes in order.
extern "C" __global__ void ssm_sum_modes_f32(float* dlogDt, int odl, const double* part, int channels, int modes) {
    GRID_STRIDE(ch, channels) {
        double s = 0;
        for (int n = 0; n < modes; n++) {
            s += part[ch * modes + n];
        }
        dlogDt[odl + ch] = __fadd_rn(dlogDt[odl + ch], (float) s);
    }
}

// Decoding: one thread per channel steps its t tokens in order, x ← Ā·x + u_t per mode (state [C, N, 2]),
// y_t = 2·Re(Σ_n w_n·x_n) modes in order. Each mode's {Ā, w, x} is kept in double in modeScratch [C, N, 6].
extern "C" __global__ void ssm_step_f32(float* y, int oy, float* state, int os, const float* u, int ou,
                                       const float* logDt, int old, const float* aRe, int ore, const float* aIm,
                                       int oim, const float* c, int oc, int tokens, int channels, int modes,
                                       double* modeScratch) {
    GRID_STRIDE(ch, channels) {
        double dt = exp((double) logDt[old + ch]);
        double* ms = modeScratch + (long long) ch * modes * 6;
        for (int n = 0; n < modes; n++) {
            int i = (int) ch * modes + n;
            double m[6];
            ssm_zoh(dt, aRe[ore + i], aIm[oim + i], c[oc + 2 * i], c[oc + 2 * i + 1], m);
            ms[6 * n] = m[0];
            ms[6 * n + 1] = m[1];
            ms[6 * n + 2] = m[4];
            ms[6 * n + 3] = m[5];
            ms[6 * n + 4] = state[os + 2 * i];
            ms[6 * n + 5] = state[os + 2 * i + 1];
        }
        for (int t = 0; t < tokens; t++) {
            double ut = u[ou + (long long) t * channels + ch];
            double acc = 0;
            for (int n = 0; n < modes; n++) {
                double* p = ms + 6 * n;
                double xr = p[0] * p[4] - p[1] * p[5] + ut;
                double xi = p[0] * p[5] + p[1] * p[4];
                p[4] = xr;
                p[5] = xi;
                acc += 2 * (p[2] * xr - p[3] * xi);
            }
            y[oy + (long long) t * channels + ch] = (float) acc;
        }
        for (int n = 0; n < modes; n++) {
            int i = (int) ch * modes + n;
            state[os + 2 * i] = (float) ms[6 * n + 4];
            state[os + 2 * i + 1] = (float) ms[6 * n + 5];
        }
    }
}

// ---- FAVOR+ positive random features ----
// One block per row-head r of x [T·NH, D]: the logits w_i·x in double in shared memory (thread per
// feature, d in order), then one thread takes |x|²/2, the first argmax and any sum in a fixed order.

__device__ void favor_logits(double* a, const float* x, long long xr, const float* w, int ow, int d, int m) {
    for (int i = threadIdx.x; i < m; i += blockDim.x) {
        double s = 0;
        for (int j = 0; j < d; j++) {
            s += (double) w[ow + (long long) i * d + j] * x[xr + j];
        }
        a[i] = s;
    }
}

__device__ int favor_argmax(const double* a, int m) {
    int best = 0;
    for (int i = 1; i < m; i++) {
        if (a[i] > a[best]) {
            best = i;
        }
    }
    return best;
}

__device__ double favor_half_norm(const float* x, long long xr, int d) {
    double s = 0;
    for (int j = 0; j < d; j++) {
        s += (double) x[xr + j] * x[xr + j];
    }
    return s / 2;
}

extern "C" __global__ void favor_features_f32(float* out, int oo, const float* x, int ox, const float* w, int ow, int rows,
                                             int d, int m, int query) {
    extern __shared__ double favor_smem[];
    __shared__ double shift;
    double scale = 1.0 / sqrt((double) m);
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        long long xr = ox + (long long) r * d;
        favor_logits(favor_smem, x, xr, w, ow, d, m);
        __syncthreads();
        if (threadIdx.x == 0) {
            shift = favor_half_norm(x, xr, d) + (query ? favor_smem[favor_argmax(favor_smem, m)] : 0.0);
        }
        __syncthreads();
        for (int i = threadIdx.x; i < m; i += blockDim.x) {
            out[oo + (long long) r * m + i] = (float) (exp(favor_smem[i] - shift) * scale);
        }
        __syncthreads();
    }
}

// dx_h += Σ_i g_i·w_i − (Σ_i g_i)·(x_h + w_{i*}) with g_i = dout_i·out_i; i* (queries only) the first argmax of
// the logits recomputed in double, as Reference.favorFeaturesBackward takes it.
extern "C" __global__ void favor_features_backward_f32(float* dx, int odx, const float* dout, int odo, const float* out,
                                                      int oo, const float* x, int ox, const float* w, int ow, int rows,
                                                      int d, int m, int query) {
    extern __shared__ double favor_smem[];
    __shared__ double total;
    __shared__ int star;
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        long long xr = ox + (long long) r * d;
        if (query) {
            favor_logits(favor_smem, x, xr, w, ow, d, m);
            __syncthreads();
            if (threadIdx.x == 0) {
                star = favor_argmax(favor_smem, m);
            }
            __syncthreads();
        }
        for (int i = threadIdx.x; i < m; i += blockDim.x) {
            favor_smem[i] = (double) dout[odo + (long long) r * m + i] * out[oo + (long long) r * m + i];
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            double s = 0;
            for (int i = 0; i < m; i++) {
                s += favor_smem[i];
            }
            total = s;
        }
        __syncthreads();
        for (int j = threadIdx.x; j < d; j += blockDim.x) {
            double acc = 0;
            for (int i = 0; i < m; i++) {
                acc += favor_smem[i] * w[ow + (long long) i * d + j];
            }
            acc -= total * ((double) x[xr + j] + (query ? (double) w[ow + (long long) star * d + j] : 0.0));
            long long at = odx + (long long) r * d + j;
            dx[at] = __fadd_rn(dx[at], (float) acc);
        }
        __syncthreads();
    }
}
