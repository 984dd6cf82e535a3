// Mixture-of-experts routing (top-k, offsets, the stable permutation, gather/scatter of rows, capacity
// slots, gates), RMSNorm, the unary backward and counter-based uniform noise, mirroring CpuBackend.
// Included at the end of kernels.cu after nn.cu, so it shares GRID_STRIDE, ROWS_LOOP, SUM_THREADS,
// nn_block_sum and seeds_bits24. Deterministic: the only atomics are integer ones whose result does not depend
// on their order (a histogram, the least NaN position); every float sum has one owning thread or a fixed tree.
// The host has checked every id before a launch, so kernels index without bounds checks.

// ---- top-k over router scores ----

// One thread per row: the CPU's insertion into a k-long descending list, strictly greater moving ahead so an
// equal score stays behind the lower expert. A NaN score is left out and its position (row·E + column) goes
// to *nanAt by atomicMin, so the host names the first one whatever thread found it.
extern "C" __global__ void topk_f32(float* values, int ov, int* indices, int oi, const float* x, int ox, int tokens,
                                    int experts, int k, int* nanAt) {
    GRID_STRIDE(r, tokens) {
        const float* xr = x + ox + r * (long long) experts;
        float* vr = values + ov + r * (long long) k;
        int* ir = indices + oi + r * (long long) k;
        int filled = 0;
        for (int j = 0; j < experts; j++) {
            float s = xr[j];
            if (isnan(s)) {
                atomicMin(nanAt, (int) (r * experts + j));
                continue;
            }
            int p = filled;
            while (p > 0 && s > vr[p - 1]) {
                p--;
            }
            if (p == k) {
                continue;
            }
            for (int q = min(filled, k - 1); q > p; q--) {
                vr[q] = vr[q - 1];
                ir[q] = ir[q - 1];
            }
            vr[p] = s;
            ir[p] = j;
            filled = min(filled + 1, k);
        }
    }
}

// dx[r, indices[r, j]] += dvalues[r, j]: one thread per row adds its k values in j order, as the CPU.
extern "C" __global__ void topk_backward_f32(float* dx, int odx, const float* dv, int odv, const int* indices, int oi,
                                             int tokens, int experts, int k) {
    GRID_STRIDE(r, tokens) {
        float* dr = dx + odx + r * (long long) experts;
        for (int j = 0; j < k; j++) {
            long long i = r * (long long) k + j;
            int e = indices[oi + i];
            dr[e] = __fadd_rn(dr[e], dv[odv + i]);
        }
    }
}

// ---- dropless routing: histogram, offsets, stable permutation ----

// offsets[1 + e] += the entries routed to e (offsets zeroed first). Integer adds commute: order-free.
extern "C" __global__ void moe_histogram(int* offsets, int oo, const int* indices, int oi, int n) {
    GRID_STRIDE(i, n) { atomicAdd(offsets + oo + 1 + indices[oi + i], 1); }
}

// The histogram in offsets[1, E] becomes its exclusive prefix sum in offsets[0, E]: one thread, E is small.
extern "C" __global__ void moe_offsets_scan(int* offsets, int oo, int experts) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        offsets[oo] = 0;
        for (int e = 0; e < experts; e++) {
            offsets[oo + e + 1] += offsets[oo + e];
        }
    }
}

// order[offsets[e] + r] = the r-th entry (in index order) routed to e. One block per expert walks the entries in
// chunks of SUM_THREADS; each thread's rank among the chunk's matches is its warp's ballot prefix plus the
// earlier warps' counts, so entries land in index order: stable without a sort.
extern "C" __global__ void moe_permutation(int* order, int oo, const int* indices, int oi, const int* offsets, int off,
                                           int n, int experts) {
    __shared__ int warpCount[SUM_THREADS / 32];
    int lane = threadIdx.x & 31;
    int warp = threadIdx.x >> 5;
    for (int e = blockIdx.x; e < experts; e += gridDim.x) {
        int cursor = offsets[off + e];
        for (int start = 0; start < n; start += SUM_THREADS) {
            int i = start + threadIdx.x;
            bool mine = i < n && indices[oi + i] == e;
            unsigned int ballot = __ballot_sync(0xffffffffu, mine);
            if (lane == 0) {
                warpCount[warp] = __popc(ballot);
            }
            __syncthreads();
            int before = 0;
            int total = 0;
            for (int w = 0; w < SUM_THREADS / 32; w++) {
                int c = warpCount[w];
                before += w < warp ? c : 0;
                total += c;
            }
            if (mine) {
                order[oo + cursor + before + __popc(ballot & ((1u << lane) - 1u))] = i;
            }
            cursor += total;
            __syncthreads();  // warpCount is rewritten by the next chunk
        }
    }
}

// ---- rows by map: gather, scatter-add, gates ----

// out[i, :] = x[rows[i], :], zeros where rows[i] = −1 (an empty slot).
extern "C" __global__ void gather_rows_f32(float* out, int oo, const float* x, int ox, const int* rows, int orow, int n,
                                           int cols) {
    GRID_STRIDE(i, (long long) n * cols) {
        long long m = i / cols;
        int r = rows[orow + m];
        out[oo + i] = r == -1 ? 0.0f : x[ox + (long long) r * cols + (i - m * cols)];
    }
}

// out[dst, c] += (weights[i]·) x[i, c] over the sources i of each destination row (scatterAddRows, and the
// embedding backward with the token ids as rows). The host, which read rows to check them, inverts them by a
// counting pass: groups[0, u) are the distinct destinations, groups[u, 2u + 1) the start of each one's sources
// in groups[2u + 1, …), which list source indices in increasing order. One thread per (destination, column)
// adds them in that order: no two threads write one element, and the float sums follow the CPU's order, bit
// for bit, without atomics or a sort.
extern "C" __global__ void scatter_add_rows_f32(float* out, int oo, const float* x, int ox, const float* weights,
                                                int ow, const int* groups, int og, int distinct, int cols) {
    const int* dests = groups + og;
    const int* starts = dests + distinct;
    const int* sources = starts + distinct + 1;
    GRID_STRIDE(i, (long long) distinct * cols) {
        int u = (int) (i / cols);
        int c = (int) (i - (long long) u * cols);
        float* dst = out + oo + (long long) dests[u] * cols + c;
        float acc = *dst;
        for (int s = starts[u]; s < starts[u + 1]; s++) {
            int src = sources[s];
            float v = x[ox + (long long) src * cols + c];
            acc = __fadd_rn(acc, weights == nullptr ? v : __fmul_rn(weights[ow + src], v));
        }
        *dst = acc;
    }
}

// out[i, :] = s[i]·x[i, :]; out may be x (each element is read and written by one thread).
extern "C" __global__ void scale_rows_f32(float* out, int oo, const float* x, int ox, const float* s, int os, int n,
                                          int cols) {
    GRID_STRIDE(i, (long long) n * cols) { out[oo + i] = __fmul_rn(s[os + i / cols], x[ox + i]); }
}

// ---- capacity (Switch) ----

// rows[i] = entries[i] / k, −1 kept; rows may be entries.
extern "C" __global__ void entry_tokens(int* rows, int orow, const int* entries, int oe, int n, int k) {
    GRID_STRIDE(i, n) {
        int v = entries[oe + i];
        rows[orow + i] = v == -1 ? -1 : v / k;
    }
}

// slots[e·capacity + r] = order[offsets[e] + r] for r < min(count_e, capacity), −1 beyond.
extern "C" __global__ void capacity_slots(int* slots, int os, const int* order, int oo, const int* offsets, int off,
                                          int experts, int capacity) {
    GRID_STRIDE(i, (long long) experts * capacity) {
        int e = (int) (i / capacity);
        int r = (int) (i - (long long) e * capacity);
        int start = offsets[off + e];
        slots[os + i] = r < offsets[off + e + 1] - start ? order[oo + start + r] : -1;
    }
}

// ---- RMSNorm: one block per row, as LayerNorm in nn.cu ----

// out = x·rstd·w, rstd = 1/√(mean(x²) + eps) with the sum in double; saves rstd. out may be x.
extern "C" __global__ void rms_norm_forward_f32(float* out, int oo, float* rstd, int ors, const float* x, int ox,
                                                const float* w, int ow, int rows, int cols, float eps) {
    __shared__ double dsh[SUM_THREADS];
    ROWS_LOOP(r, rows) {
        const float* xr = x + ox + (long long) r * cols;
        double ss = 0;
        for (int c = threadIdx.x; c < cols; c += SUM_THREADS) {
            double v = xr[c];
            ss = __dadd_rn(ss, __dmul_rn(v, v));
        }
        float rs = (float) (1.0 / sqrt(nn_block_sum(ss, dsh) / cols + eps));
        float* outr = out + oo + (long long) r * cols;
        for (int c = threadIdx.x; c < cols; c += SUM_THREADS) {
            outr[c] = __fmul_rn(__fmul_rn(xr[c], rs), w[ow + c]);
        }
        if (threadIdx.x == 0) {
            rstd[ors + r] = rs;
        }
    }
}

// dx += (w·dy − x̂·mean(w·dy·x̂))·rstd per row, x̂ = x·rstd, the mean in double as the CPU forms it.
extern "C" __global__ void rms_norm_backward_dx_f32(float* dx, int odx, const float* dy, int ody, const float* x, int ox,
                                                    const float* w, int ow, const float* rstd, int ors, int rows,
                                                    int cols) {
    __shared__ double dsh[SUM_THREADS];
    ROWS_LOOP(r, rows) {
        long long b = (long long) r * cols;
        float rs = rstd[ors + r];
        double s = 0;
        for (int c = threadIdx.x; c < cols; c += SUM_THREADS) {
            double t = __dmul_rn(__dmul_rn(__dmul_rn((double) w[ow + c], dy[ody + b + c]), x[ox + b + c]), rs);
            s = __dadd_rn(s, t);
        }
        float meanDnX = (float) (nn_block_sum(s, dsh) / cols);
        for (int c = threadIdx.x; c < cols; c += SUM_THREADS) {
            float xhat = __fmul_rn(x[ox + b + c], rs);
            float g = __fmul_rn(__fsub_rn(__fmul_rn(w[ow + c], dy[ody + b + c]), __fmul_rn(xhat, meanDnX)), rs);
            dx[odx + b + c] = __fadd_rn(dx[odx + b + c], g);
        }
    }
}

// dw[c] += Σ_r dy·x̂: one thread per column walks the rows in order in double, the CPU's order exactly.
extern "C" __global__ void rms_norm_backward_dw_f32(float* dw, int odw, const float* dy, int ody, const float* x, int ox,
                                                    const float* rstd, int ors, int rows, int cols) {
    GRID_STRIDE(c, cols) {
        double sw = 0;
        for (int r = 0; r < rows; r++) {
            long long i = (long long) r * cols + c;
            sw = __dadd_rn(sw, __dmul_rn((double) dy[ody + i], (double) __fmul_rn(x[ox + i], rstd[ors + r])));
        }
        dw[odw + c] = __fadd_rn(dw[odw + c], (float) sw);
    }
}

// ---- unary backward: CpuBackend.derivative, UnaryOp's ordinals as unary_f32 ----

__device__ __forceinline__ float unary_derivative(int op, float v) {
    switch (op) {
        case 0: return 1.0f;                                                     // COPY
        case 1: return -1.0f;                                                    // NEG
        case 2: return v > 0.0f ? 1.0f : v < 0.0f ? -1.0f : 0.0f;                // ABS
        case 3: return __fmul_rn(2.0f, v);                                       // SQUARE
        case 4: return __fdiv_rn(0.5f, (float) sqrt((double) v));                // SQRT
        case 5: {                                                                // RECIPROCAL
            float r = __fdiv_rn(1.0f, v);
            return __fmul_rn(-r, r);
        }
        case 6: return (float) exp((double) v);                                  // EXP
        case 7: return __fdiv_rn(1.0f, v);                                       // LOG
        case 8: {                                                                // TANH
            float t = (float) tanh((double) v);
            return __fsub_rn(1.0f, __fmul_rn(t, t));
        }
        case 9: {                                                                // SIGMOID
            float s = (float) (1.0 / (1.0 + exp(-(double) v)));
            return __fmul_rn(s, __fsub_rn(1.0f, s));
        }
        case 10: return v > 0.0f ? 1.0f : 0.0f;                                  // RELU
        case 11: return v > 0.0f ? 1.0f : (float) exp((double) v);              // ELU_PLUS_ONE
        default: return (float) -sin((double) v);                                // COS
    }
}

// dx += dy·f′(x); dx may be dy (same element, same thread).
extern "C" __global__ void unary_backward_f32(int op, float* dx, int odx, const float* dy, int ody, const float* x,
                                              int ox, int n) {
    GRID_STRIDE(i, n) {
        dx[odx + i] = __fadd_rn(dx[odx + i], __fmul_rn(dy[ody + i], unary_derivative(op, x[ox + i])));
    }
}

// ---- uniform noise: Noise.uniform, bit for bit ----

// Math.nextDown of a finite float: the next float toward −∞ (below +0 and −0 is −MIN_VALUE).
__device__ __forceinline__ float next_down(float f) {
    if (f == 0.0f) {
        return __int_as_float(0x80000001);
    }
    int bits = __float_as_int(f);
    return __int_as_float(f > 0.0f ? bits - 1 : bits + 1);
}

// u = Seeds.bits24(seed, i)·2⁻²⁴ and (float) (lo + (hi − lo)·u) in double, each step rounded as Java does (the
// _rn intrinsics keep nvcc from fusing them into an FMA); a result rounded up to hi becomes nextDown(hi).
extern "C" __global__ void uniform_noise_f32(float* out, int oo, int n, float lo, float hi, long long seed) {
    GRID_STRIDE(i, n) {
        double u = seeds_bits24(seed, i) * (1.0 / 16777216.0);
        float v = (float) __dadd_rn((double) lo, __dmul_rn(__dsub_rn((double) hi, (double) lo), u));
        out[oo + i] = v < hi ? v : next_down(hi);
    }
}
