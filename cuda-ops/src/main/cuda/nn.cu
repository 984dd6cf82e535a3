// The transformer's non-GEMM kernels: softmax, LayerNorm, GELU, dropout, embeddings, cross-entropy and
// AdamW, mirroring CpuBackend's semantics (backward kernels accumulate; forward outputs may alias inputs
// where Backend allows). Included at the end of kernels.cu, so it shares its helpers and SUM_THREADS.
// Row-wise kernels run one block of SUM_THREADS threads per row: thread t owns columns t, t + 256, … in
// every pass (so an output that aliases its input is read and written by the same thread), and row sums
// combine those per-thread partials in double through a fixed tree: no float atomics, the same bits on
// every run. Float steps that the CPU rounds separately use the _rn intrinsics, which nvcc never
// contracts into FMAs.

#define ROWS_LOOP(r, rows) for (int r = blockIdx.x; r < (rows); r += gridDim.x)

// Σ over the block of each thread's v, by a fixed tree; every thread gets the total. sh holds SUM_THREADS.
__device__ double nn_block_sum(double v, double* sh) {
    int t = threadIdx.x;
    sh[t] = v;
    __syncthreads();
    for (int stride = SUM_THREADS / 2; stride > 0; stride >>= 1) {
        if (t < stride) {
            sh[t] += sh[t + stride];
        }
        __syncthreads();
    }
    double total = sh[0];
    __syncthreads();  // sh is reused by the next reduction
    return total;
}

// The largest of each thread's v (exact, so any order gives the same value); every thread gets it.
__device__ float nn_block_max(float v, float* sh) {
    int t = threadIdx.x;
    sh[t] = v;
    __syncthreads();
    for (int stride = SUM_THREADS / 2; stride > 0; stride >>= 1) {
        if (t < stride) {
            sh[t] = fmaxf(sh[t], sh[t + stride]);
        }
        __syncthreads();
    }
    float m = sh[0];
    __syncthreads();
    return m;
}

__device__ float nn_row_max(const float* row, int cols, float* sh) {
    float m = -INFINITY;
    for (int c = threadIdx.x; c < cols; c += SUM_THREADS) {
        m = fmaxf(m, row[c]);
    }
    return nn_block_max(m, sh);
}

// ---- softmax ----

// y = softmax(x) per row; a row of all −∞ gives zeros; y may be x. e = exp(x − max) as the CPU: the
// difference rounded to float, the exponential in double rounded once.
extern "C" __global__ void softmax_forward_f32(float* y, int oy, const float* x, int ox, int rows, int cols) {
    __shared__ double dsh[SUM_THREADS];
    __shared__ float fsh[SUM_THREADS];
    ROWS_LOOP(r, rows) {
        const float* xr = x + ox + (long long) r * cols;
        float* yr = y + oy + (long long) r * cols;
        float max = nn_row_max(xr, cols, fsh);
        if (max == -INFINITY) {
            for (int c = threadIdx.x; c < cols; c += SUM_THREADS) {
                yr[c] = 0.0f;  // a fully masked row attends nothing
            }
            continue;
        }
        double s = 0;
        for (int c = threadIdx.x; c < cols; c += SUM_THREADS) {
            float e = (float) exp((double) __fsub_rn(xr[c], max));
            yr[c] = e;
            s += e;
        }
        float inv = (float) (1.0 / nn_block_sum(s, dsh));
        for (int c = threadIdx.x; c < cols; c += SUM_THREADS) {
            yr[c] = __fmul_rn(yr[c], inv);
        }
    }
}

// dx += y ⊙ (dy − Σ dy·y), the dot in double.
extern "C" __global__ void softmax_backward_f32(float* dx, int odx, const float* dy, int ody, const float* y, int oy,
                                                int rows, int cols) {
    __shared__ double dsh[SUM_THREADS];
    ROWS_LOOP(r, rows) {
        long long b = (long long) r * cols;
        double s = 0;
        for (int c = threadIdx.x; c < cols; c += SUM_THREADS) {
            s += (double) dy[ody + b + c] * y[oy + b + c];
        }
        float d = (float) nn_block_sum(s, dsh);
        for (int c = threadIdx.x; c < cols; c += SUM_THREADS) {
            dx[odx + b + c] = __fadd_rn(dx[odx + b + c], __fmul_rn(y[oy + b + c], __fsub_rn(dy[ody + b + c], d)));
        }
    }
}

// ---- LayerNorm ----

// out = (x − mean)·rstd·w + b per row; saves mean and rstd. Both sums in double; out may be x.
extern "C" __global__ void layer_norm_forward_f32(float* out, int oo, float* mean, int om, float* rstd, int ors,
                                                  const float* x, int ox, const float* w, int ow, const float* b,
                                                  int ob, int rows, int cols, float eps) {
    __shared__ double dsh[SUM_THREADS];
    ROWS_LOOP(r, rows) {
        const float* xr = x + ox + (long long) r * cols;
        double s = 0;
        for (int c = threadIdx.x; c < cols; c += SUM_THREADS) {
            s += xr[c];
        }
        float mu = (float) (nn_block_sum(s, dsh) / cols);
        double ss = 0;
        for (int c = threadIdx.x; c < cols; c += SUM_THREADS) {
            double d = (double) xr[c] - mu;
            ss += d * d;
        }
        float rs = (float) (1.0 / sqrt(nn_block_sum(ss, dsh) / cols + eps));
        float* outr = out + oo + (long long) r * cols;
        for (int c = threadIdx.x; c < cols; c += SUM_THREADS) {
            outr[c] = __fmaf_rn(__fmul_rn(__fsub_rn(xr[c], mu), rs), w[ow + c], b[ob + c]);
        }
        if (threadIdx.x == 0) {
            mean[om + r] = mu;
            rstd[ors + r] = rs;
        }
    }
}

// dx += (w·dy − mean(w·dy) − x̂·mean(w·dy·x̂))·rstd per row, the two means in double.
extern "C" __global__ void layer_norm_backward_dx_f32(float* dx, int odx, const float* dy, int ody, const float* x,
                                                      int ox, const float* w, int ow, const float* mean, int om,
                                                      const float* rstd, int ors, int rows, int cols) {
    __shared__ double dsh[SUM_THREADS];
    ROWS_LOOP(r, rows) {
        long long b = (long long) r * cols;
        float mu = mean[om + r];
        float rs = rstd[ors + r];
        double sDn = 0;
        double sDnX = 0;
        for (int c = threadIdx.x; c < cols; c += SUM_THREADS) {
            double dn = __fmul_rn(w[ow + c], dy[ody + b + c]);
            sDn += dn;
            sDnX += dn * __fmul_rn(__fsub_rn(x[ox + b + c], mu), rs);
        }
        float meanDn = (float) (nn_block_sum(sDn, dsh) / cols);
        float meanDnX = (float) (nn_block_sum(sDnX, dsh) / cols);
        for (int c = threadIdx.x; c < cols; c += SUM_THREADS) {
            float dn = __fmul_rn(w[ow + c], dy[ody + b + c]);
            float xh = __fmul_rn(__fsub_rn(x[ox + b + c], mu), rs);
            float g = __fmul_rn(__fsub_rn(__fsub_rn(dn, meanDn), __fmul_rn(xh, meanDnX)), rs);
            dx[odx + b + c] = __fadd_rn(dx[odx + b + c], g);
        }
    }
}

// dw[c] += Σ_r dy·x̂, db[c] += Σ_r dy: one thread per column walks the rows in order (neighbouring threads
// read neighbouring columns), summing in double.
extern "C" __global__ void layer_norm_backward_dwb_f32(float* dw, int odw, float* db, int odb, const float* dy, int ody,
                                                       const float* x, int ox, const float* mean, int om,
                                                       const float* rstd, int ors, int rows, int cols) {
    GRID_STRIDE(c, cols) {
        double sw = 0;
        double sb = 0;
        for (int r = 0; r < rows; r++) {
            long long i = (long long) r * cols + c;
            double g = dy[ody + i];
            sw += g * __fmul_rn(__fsub_rn(x[ox + i], mean[om + r]), rstd[ors + r]);
            sb += g;
        }
        dw[odw + c] = __fadd_rn(dw[odw + c], (float) sw);
        db[odb + c] = __fadd_rn(db[odb + c], (float) sb);
    }
}

// ---- GELU (tanh form), the CPU's formulation ----
// With e = exp(2u), u = √(2/π)·(x + 0.044715·x³): 1 − tanh u = a = 2/(e+1) and 1 + tanh u = 2 − a where
// e > 1, e·a elsewhere, which avoids the cancellation 1 ± tanh would suffer.

#define GELU_SCALE ((float) 0.7978845608028654)  // (float) √(2/π), as VecMath's
#define GELU_CUBE 0.044715f

__device__ __forceinline__ float gelu_exp(float v) {
    float u2 = __fmul_rn(__fmul_rn(v, __fadd_rn(__fmul_rn(__fmul_rn(v, v), GELU_CUBE), 1.0f)), 2.0f * GELU_SCALE);
    return (float) exp((double) u2);
}

extern "C" __global__ void gelu_forward_f32(float* out, int oo, const float* x, int ox, int n) {
    GRID_STRIDE(i, n) {
        float v = x[ox + i];
        float e = gelu_exp(v);
        float a = __fdiv_rn(2.0f, __fadd_rn(e, 1.0f));
        float opt = e > 1.0f ? __fsub_rn(2.0f, a) : __fmul_rn(e, a);
        out[oo + i] = __fmul_rn(__fmul_rn(v, 0.5f), opt);
    }
}

extern "C" __global__ void gelu_backward_f32(float* dx, int odx, const float* dy, int ody, const float* x, int ox, int n) {
    GRID_STRIDE(i, n) {
        float v = x[ox + i];
        float e = gelu_exp(v);
        float a = __fdiv_rn(2.0f, __fadd_rn(e, 1.0f));
        float opt = e > 1.0f ? __fsub_rn(2.0f, a) : __fmul_rn(e, a);
        float inner = __fmul_rn(__fadd_rn(__fmul_rn(__fmul_rn(v, v), 3.0f * GELU_CUBE), 1.0f), GELU_SCALE);
        float grad = __fadd_rn(__fmul_rn(opt, 0.5f), __fmul_rn(__fmul_rn(__fmul_rn(v, 0.5f), __fmul_rn(a, opt)), inner));
        dx[odx + i] = __fadd_rn(dx[odx + i], __fmul_rn(grad, dy[ody + i]));
    }
}

// ---- dropout: DropoutMask.keeps, bit for bit ----

// Seeds.mix: SplitMix64's finaliser, in unsigned 64-bit arithmetic (Java's long wraps the same way, and
// >>> is the unsigned shift).
__device__ __forceinline__ unsigned long long seeds_mix(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Seeds.bits24(seed, i): 24 random bits for element i of the counter-based stream seed.
__device__ __forceinline__ int seeds_bits24(long long seed, long long i) {
    unsigned long long h = seeds_mix((unsigned long long) seed + ((unsigned long long) i + 1ull) * 0x9E3779B97F4A7C15ull);
    return (int) (h >> 40);
}

// DropoutMask.keeps(seed, i, p): Seeds.bits24(seed, i) >= threshold, threshold = (long) (p · 2^24) from the host.
__device__ __forceinline__ bool dropout_keeps(long long seed, long long i, int threshold) {
    return seeds_bits24(seed, i) >= threshold;
}

extern "C" __global__ void dropout_forward_f32(float* out, int oo, const float* x, int ox, int n, int threshold,
                                               float scale, long long seed) {
    GRID_STRIDE(i, n) {
        out[oo + i] = dropout_keeps(seed, i, threshold) ? __fmul_rn(x[ox + i], scale) : 0.0f;
    }
}

extern "C" __global__ void dropout_backward_f32(float* dx, int odx, const float* dy, int ody, int n, int threshold,
                                                float scale, long long seed) {
    GRID_STRIDE(i, n) {
        if (dropout_keeps(seed, i, threshold)) {
            dx[odx + i] = __fadd_rn(dx[odx + i], __fmul_rn(dy[ody + i], scale));
        }
    }
}

// ---- embeddings (the backward is moe.cu's scatter_add_rows_f32, the ids as destination rows) ----

extern "C" __global__ void embedding_forward_f32(float* out, int oo, const int* ids, int oi, const float* table, int ot,
                                                 int n, int cols) {
    GRID_STRIDE(i, (long long) n * cols) {
        long long r = i / cols;
        out[oo + i] = table[ot + (long long) ids[oi + r] * cols + (i - r * cols)];
    }
}

// ---- cross-entropy ----

// losses[r] = log Σ exp(x − max) + max − x[target] (0 where target == ignore). With dlogits set, also
// dlogits = (softmax − onehot)·scale, written (zero on ignored rows); dlogits may be logits: x[target] is
// read before any write and every other element is read and written by the thread that owns its column.
extern "C" __global__ void cross_entropy_f32(float* losses, int ol, float* dl, int odl, const float* x, int ox,
                                             const int* targets, int ot, int rows, int vocab, int ignoreIndex,
                                             float scale) {
    __shared__ double dsh[SUM_THREADS];
    __shared__ float fsh[SUM_THREADS];
    ROWS_LOOP(r, rows) {
        const float* xr = x + ox + (long long) r * vocab;
        float* dr = dl == nullptr ? nullptr : dl + odl + (long long) r * vocab;
        int target = targets[ot + r];
        if (target == ignoreIndex) {
            if (threadIdx.x == 0) {
                losses[ol + r] = 0.0f;
            }
            if (dr != nullptr) {
                for (int c = threadIdx.x; c < vocab; c += SUM_THREADS) {
                    dr[c] = 0.0f;
                }
            }
            continue;
        }
        float logTarget = xr[target];
        float max = nn_row_max(xr, vocab, fsh);  // its barriers order every read of x[target] before the writes
        double s = 0;
        for (int c = threadIdx.x; c < vocab; c += SUM_THREADS) {
            float e = (float) exp((double) __fsub_rn(xr[c], max));
            if (dr != nullptr) {
                dr[c] = e;
            }
            s += e;
        }
        double sum = nn_block_sum(s, dsh);
        if (threadIdx.x == 0) {
            losses[ol + r] = (float) (log(sum) + max - logTarget);
        }
        if (dr != nullptr) {
            float f = __fdiv_rn(scale, (float) sum);
            for (int c = threadIdx.x; c < vocab; c += SUM_THREADS) {
                float g = __fmul_rn(dr[c], f);
                dr[c] = c == target ? __fsub_rn(g, scale) : g;
            }
        }
    }
}

// ---- AdamW: VecMath.adamW's operations in its order, each rounded as in Java, so it matches the CPU bit for bit ----

extern "C" __global__ void adamw_f32(float* p, int op, const float* g, int og, float* m, int om, float* v, int ov, int n,
                                     float b1, float oneMinusB1, float b2, float oneMinusB2, float decay,
                                     float stepSize, float bc2Sqrt, float eps, float gradScale) {
    GRID_STRIDE(i, n) {
        float gi = __fmul_rn(g[og + i], gradScale);
        float mi = __fadd_rn(__fmul_rn(m[om + i], b1), __fmul_rn(gi, oneMinusB1));
        float vi = __fadd_rn(__fmul_rn(v[ov + i], b2), __fmul_rn(__fmul_rn(gi, gi), oneMinusB2));
        m[om + i] = mi;
        v[ov + i] = vi;
        float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2Sqrt), eps);
        p[op + i] = __fsub_rn(__fmul_rn(p[op + i], decay), __fdiv_rn(__fmul_rn(mi, stepSize), denom));
    }
}
