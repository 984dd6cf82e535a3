// FlashAttention-2 forward and backward over packed variable-length sequences (fp32), and the column sums
// of a linear layer's bias gradient. Included at the end of kernels.cu. Semantics follow CpuAttention:
// q[Tq, NH, HS], k and v[Tk, NKV, HS], out like q, lse[NH, Tq]; query head h reads kv head h / group;
// causal keeps key j ≤ i + (Lk − Lq); a block mask (one int per (query block, key block), blocks of
// mask_block tokens, a multiple of ATT_TILE) skips whole tiles; a row attending no key gets out 0, lse −∞.
//
// Every block owns one ATT_TILE-row tile and runs ATT_THREADS threads: 4 threads per row, thread `sub`
// of a row owns head dims sub, sub + 4, … (so HS ≤ 4·ATT_DPT) and columns sub, sub + 4, … of the tile's
// score row. Row reductions combine the 4 threads with warp shuffles in a fixed order. Tiles live in
// dynamic shared memory with rows padded to HS + 1 floats, so the 8 rows a warp touches hit different banks.
// The backward runs one pass per (key tile, kv head) for dK and dV — looping over the group's query
// heads and the query tiles in order — and a separate pass per (query tile, head) for dQ, so every
// output element has one writer and a fixed summation order: no atomics, the same bits on every run.

#define ATT_TILE 64
#define ATT_THREADS 256
#define ATT_DPT 32  // head dims per thread: HS ≤ 128

// Rows [row0, row0 + rows) of a packed [T, heads·hs] tensor's head `h` into sh[ATT_TILE][hs + 1]; rows past
// `rows` become zeros so padded tiles compute finite garbage that is never kept.
__device__ void att_load_tile(float* sh, const float* src, long long row0, int rows, int ld, int h, int hs) {
    int ldsh = hs + 1;
    for (int e = threadIdx.x; e < ATT_TILE * hs; e += ATT_THREADS) {
        int r = e / hs;
        int d = e - r * hs;
        sh[r * ldsh + d] = r < rows ? src[(row0 + r) * ld + (long long) h * hs + d] : 0.0f;
    }
}

// Whether the block mask drops the (query tile qt, key tile kt) pair.
__device__ __forceinline__ bool att_skipped(const int* mask, int mask_blocks, int mask_block, int qt, int kt) {
    return mask != nullptr && mask[(qt * ATT_TILE / mask_block) * mask_blocks + kt * ATT_TILE / mask_block] == 0;
}

// Σ or max over the 4 threads of a row (lanes 4k..4k+3 of a warp), the same order on every thread.
__device__ __forceinline__ float att_row_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

__device__ __forceinline__ float att_row_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

// ---- forward ----

// Grid (query tiles of the longest sequence, heads, sequences); shared: Q, K, V tiles and the score tile.
extern "C" __global__ void attention_forward_f32(float* out, int oo, float* lse, int ol, const float* q, int oq,
                                                 const float* k, int ok, const float* v, int ov, const int* cu_q,
                                                 int ocq, const int* cu_k, int ock, int sequences, int total_q,
                                                 int heads, int kv_heads, int hs, float scale, int causal,
                                                 const int* mask, int omask, int mask_blocks, int mask_block) {
    extern __shared__ float att_sh[];
    int ldsh = hs + 1;
    float* qs = att_sh;
    float* ks = qs + ATT_TILE * ldsh;
    float* vs = ks + ATT_TILE * ldsh;
    float* ss = vs + ATT_TILE * ldsh;  // [ATT_TILE][ATT_TILE + 1]
    const int* mk = mask == nullptr ? nullptr : mask + omask;
    int qt = blockIdx.x;
    int h = blockIdx.y;
    int g = h / (heads / kv_heads);
    int row = threadIdx.x >> 2;
    int sub = threadIdx.x & 3;
    int ldq = heads * hs;
    int ldk = kv_heads * hs;
    for (int b = blockIdx.z; b < sequences; b += gridDim.z) {
        int q_start = cu_q[ocq + b];
        int k_start = cu_k[ock + b];
        int lq = cu_q[ocq + b + 1] - q_start;
        int lk = cu_k[ock + b + 1] - k_start;
        if (qt * ATT_TILE >= lq) {
            continue;  // uniform over the block: no thread reaches a barrier the others skip
        }
        int off = lk - lq;
        int rows = min(ATT_TILE, lq - qt * ATT_TILE);
        int i = qt * ATT_TILE + row;  // this thread's query position in the sequence
        int k_end = causal ? min(lk, qt * ATT_TILE + rows + off) : lk;
        att_load_tile(qs, q + oq, q_start + (long long) qt * ATT_TILE, rows, ldq, h, hs);
        float acc[ATT_DPT];
#pragma unroll
        for (int t = 0; t < ATT_DPT; t++) {
            acc[t] = 0.0f;
        }
        float m = -INFINITY;
        float l = 0.0f;
        for (int kt = 0; kt * ATT_TILE < k_end; kt++) {
            if (att_skipped(mk, mask_blocks, mask_block, qt, kt)) {
                continue;
            }
            int cols = min(ATT_TILE, lk - kt * ATT_TILE);
            __syncthreads();  // the previous tile's K, V and scores are no longer read
            att_load_tile(ks, k + ok, k_start + (long long) kt * ATT_TILE, cols, ldk, g, hs);
            att_load_tile(vs, v + ov, k_start + (long long) kt * ATT_TILE, cols, ldk, g, hs);
            __syncthreads();
            // Keys of this tile the row attends: a prefix of its columns, as on the CPU.
            int allowed = row < rows ? (causal ? max(0, min(cols, i + off - kt * ATT_TILE + 1)) : cols) : 0;
            float s[ATT_TILE / 4];
            float tile_max = -INFINITY;
#pragma unroll
            for (int t = 0; t < ATT_TILE / 4; t++) {
                int j = sub + 4 * t;
                float dot = 0.0f;
                for (int d = 0; d < hs; d++) {
                    dot = fmaf(qs[row * ldsh + d], ks[j * ldsh + d], dot);
                }
                s[t] = j < allowed ? scale * dot : -INFINITY;
                tile_max = fmaxf(tile_max, s[t]);
            }
            // The shuffles run on every lane (rows of one warp may differ in what they attend), so no branch here.
            float m_new = fmaxf(m, att_row_max(tile_max));
            float* sr = ss + row * (ATT_TILE + 1);
            float sum = 0.0f;
#pragma unroll
            for (int t = 0; t < ATT_TILE / 4; t++) {
                float p = s[t] == -INFINITY ? 0.0f : expf(s[t] - m_new);
                sr[sub + 4 * t] = p;
                sum += p;
            }
            sum = att_row_sum(sum);
            // Nothing attended so far (m_new = −∞): P is zero and the state stays as it is.
            float corr = m_new == -INFINITY ? 1.0f : expf(m - m_new);
            l = l * corr + sum;
            m = m_new;
#pragma unroll
            for (int t = 0; t < ATT_DPT; t++) {
                acc[t] *= corr;
            }
            __syncwarp();  // the row's 4 threads wrote its P; each reads all of it
#pragma unroll
            for (int t = 0; t < ATT_DPT; t++) {
                int d = sub + 4 * t;
                if (d < hs) {
                    float o = acc[t];
                    for (int j = 0; j < cols; j++) {
                        o = fmaf(sr[j], vs[j * ldsh + d], o);
                    }
                    acc[t] = o;
                }
            }
        }
        if (row < rows) {
            long long r = q_start + i;
            float* dst = out + oo + r * ldq + (long long) h * hs;
            float inv = l == 0.0f ? 0.0f : 1.0f / l;
#pragma unroll
            for (int t = 0; t < ATT_DPT; t++) {
                int d = sub + 4 * t;
                if (d < hs) {
                    dst[d] = acc[t] * inv;
                }
            }
            if (sub == 0) {
                lse[ol + (long long) h * total_q + r] = l == 0.0f ? -INFINITY : (float) ((double) m + log((double) l));
            }
        }
        __syncthreads();  // the next sequence reloads the Q tile
    }
}

// ---- backward ----

// D[h, r] = dO[r, h]·O[r, h], the softmax backward's row term, one thread per (row, head), in fp32 in dim order.
extern "C" __global__ void attention_row_dot_f32(float* dd, const float* dout, int odo, const float* out, int oo,
                                                 int total_q, int heads, int hs) {
    GRID_STRIDE(e, (long long) total_q * heads) {
        long long r = e / heads;
        int h = (int) (e - r * heads);
        const float* a = dout + odo + e * hs;
        const float* o = out + oo + e * hs;
        float s = 0.0f;
        for (int d = 0; d < hs; d++) {
            s = fmaf(a[d], o[d], s);
        }
        dd[(long long) h * total_q + r] = s;
    }
}

// dK and dV += the gradients of one key tile of kv head g: grid (key tiles of the longest sequence,
// kv heads, sequences). Thread (row = key j, sub) recomputes P and dS for queries sub, sub + 4, … of each
// query tile, stores them transposed, and accumulates its key row's dims. Query heads of the group and
// their query tiles run in order, so GQA's sum has a fixed order.
extern "C" __global__ void attention_backward_dkdv_f32(float* dk, int odk, float* dv, int odv, const float* dout,
                                                       int odo, const float* q, int oq, const float* k, int ok,
                                                       const float* v, int ov, const float* lse, int ol,
                                                       const float* dd, const int* cu_q, int ocq, const int* cu_k,
                                                       int ock, int sequences, int total_q, int heads, int kv_heads,
                                                       int hs, float scale, int causal, const int* mask, int omask,
                                                       int mask_blocks, int mask_block) {
    extern __shared__ float att_sh[];
    int ldsh = hs + 1;
    float* ks = att_sh;
    float* vs = ks + ATT_TILE * ldsh;
    float* qs = vs + ATT_TILE * ldsh;
    float* dos = qs + ATT_TILE * ldsh;
    float* ps = dos + ATT_TILE * ldsh;       // P transposed: [key][query], rows ATT_TILE + 1
    float* dss = ps + ATT_TILE * (ATT_TILE + 1);  // dS transposed
    __shared__ float lse_s[ATT_TILE];
    __shared__ float d_s[ATT_TILE];
    const int* mk = mask == nullptr ? nullptr : mask + omask;
    int kt = blockIdx.x;
    int g = blockIdx.y;
    int group = heads / kv_heads;
    int row = threadIdx.x >> 2;
    int sub = threadIdx.x & 3;
    int ldq = heads * hs;
    int ldk = kv_heads * hs;
    for (int b = blockIdx.z; b < sequences; b += gridDim.z) {
        int q_start = cu_q[ocq + b];
        int k_start = cu_k[ock + b];
        int lq = cu_q[ocq + b + 1] - q_start;
        int lk = cu_k[ock + b + 1] - k_start;
        if (kt * ATT_TILE >= lk) {
            continue;
        }
        int off = lk - lq;
        int cols = min(ATT_TILE, lk - kt * ATT_TILE);
        int j = kt * ATT_TILE + row;  // this thread's key position
        att_load_tile(ks, k + ok, k_start + (long long) kt * ATT_TILE, cols, ldk, g, hs);
        att_load_tile(vs, v + ov, k_start + (long long) kt * ATT_TILE, cols, ldk, g, hs);
        float adk[ATT_DPT];
        float adv[ATT_DPT];
#pragma unroll
        for (int t = 0; t < ATT_DPT; t++) {
            adk[t] = 0.0f;
            adv[t] = 0.0f;
        }
        int qt_start = causal ? max(0, kt * ATT_TILE - off) / ATT_TILE : 0;
        int q_tiles = (lq + ATT_TILE - 1) / ATT_TILE;
        float* pr = ps + row * (ATT_TILE + 1);
        float* dsr = dss + row * (ATT_TILE + 1);
        for (int h = g * group; h < (g + 1) * group; h++) {
            for (int qt = qt_start; qt < q_tiles; qt++) {
                if (att_skipped(mk, mask_blocks, mask_block, qt, kt)) {
                    continue;
                }
                int rows = min(ATT_TILE, lq - qt * ATT_TILE);
                long long q_row = q_start + (long long) qt * ATT_TILE;
                __syncthreads();  // the previous tile's Q, dO, P and dS are no longer read
                att_load_tile(qs, q + oq, q_row, rows, ldq, h, hs);
                att_load_tile(dos, dout + odo, q_row, rows, ldq, h, hs);
                for (int t = threadIdx.x; t < ATT_TILE; t += ATT_THREADS) {
                    lse_s[t] = t < rows ? lse[ol + (long long) h * total_q + q_row + t] : -INFINITY;
                    d_s[t] = t < rows ? dd[(long long) h * total_q + q_row + t] : 0.0f;
                }
                __syncthreads();
#pragma unroll 4
                for (int t = 0; t < ATT_TILE / 4; t++) {
                    int i = sub + 4 * t;  // query row of the tile
                    int qi = qt * ATT_TILE + i;
                    float li = lse_s[i];
                    bool attends = row < cols && i < rows && li != -INFINITY && (!causal || j <= qi + off);
                    float p = 0.0f;
                    float ds = 0.0f;
                    if (attends) {
                        float s = 0.0f;
                        float dp = 0.0f;
                        for (int d = 0; d < hs; d++) {
                            s = fmaf(qs[i * ldsh + d], ks[row * ldsh + d], s);
                            dp = fmaf(dos[i * ldsh + d], vs[row * ldsh + d], dp);
                        }
                        p = expf(scale * s - li);
                        ds = p * (dp - d_s[i]);
                    }
                    pr[i] = p;
                    dsr[i] = ds;
                }
                __syncwarp();  // the key row's 4 threads wrote its P and dS; each reads all of them
#pragma unroll
                for (int t = 0; t < ATT_DPT; t++) {
                    int d = sub + 4 * t;
                    if (d < hs) {
                        float a = adv[t];
                        float c = adk[t];
                        for (int i = 0; i < rows; i++) {
                            a = fmaf(pr[i], dos[i * ldsh + d], a);
                            c = fmaf(dsr[i], qs[i * ldsh + d], c);
                        }
                        adv[t] = a;
                        adk[t] = c;
                    }
                }
            }
        }
        if (row < cols) {
            long long at = (k_start + (long long) j) * ldk + (long long) g * hs;
#pragma unroll
            for (int t = 0; t < ATT_DPT; t++) {
                int d = sub + 4 * t;
                if (d < hs) {
                    dk[odk + at + d] += scale * adk[t];
                    dv[odv + at + d] += adv[t];
                }
            }
        }
        __syncthreads();  // the next sequence reloads K and V
    }
}

// dQ += the gradient of one query tile of head h: grid (query tiles of the longest sequence, heads,
// sequences); key tiles in order. Thread (row = query i, sub) recomputes dS for keys sub, sub + 4, ….
extern "C" __global__ void attention_backward_dq_f32(float* dq, int odq, const float* dout, int odo, const float* q,
                                                     int oq, const float* k, int ok, const float* v, int ov,
                                                     const float* lse, int ol, const float* dd, const int* cu_q,
                                                     int ocq, const int* cu_k, int ock, int sequences, int total_q,
                                                     int heads, int kv_heads, int hs, float scale, int causal,
                                                     const int* mask, int omask, int mask_blocks, int mask_block) {
    extern __shared__ float att_sh[];
    int ldsh = hs + 1;
    float* qs = att_sh;
    float* dos = qs + ATT_TILE * ldsh;
    float* ks = dos + ATT_TILE * ldsh;
    float* vs = ks + ATT_TILE * ldsh;
    float* dss = vs + ATT_TILE * ldsh;  // [query][key], rows ATT_TILE + 1
    const int* mk = mask == nullptr ? nullptr : mask + omask;
    int qt = blockIdx.x;
    int h = blockIdx.y;
    int g = h / (heads / kv_heads);
    int row = threadIdx.x >> 2;
    int sub = threadIdx.x & 3;
    int ldq = heads * hs;
    int ldk = kv_heads * hs;
    for (int b = blockIdx.z; b < sequences; b += gridDim.z) {
        int q_start = cu_q[ocq + b];
        int k_start = cu_k[ock + b];
        int lq = cu_q[ocq + b + 1] - q_start;
        int lk = cu_k[ock + b + 1] - k_start;
        if (qt * ATT_TILE >= lq) {
            continue;
        }
        int off = lk - lq;
        int rows = min(ATT_TILE, lq - qt * ATT_TILE);
        int i = qt * ATT_TILE + row;
        long long r = q_start + (long long) i;
        int k_end = causal ? min(lk, qt * ATT_TILE + rows + off) : lk;
        att_load_tile(qs, q + oq, q_start + (long long) qt * ATT_TILE, rows, ldq, h, hs);
        att_load_tile(dos, dout + odo, q_start + (long long) qt * ATT_TILE, rows, ldq, h, hs);
        float li = row < rows ? lse[ol + (long long) h * total_q + r] : -INFINITY;
        float di = row < rows ? dd[(long long) h * total_q + r] : 0.0f;
        float acc[ATT_DPT];
#pragma unroll
        for (int t = 0; t < ATT_DPT; t++) {
            acc[t] = 0.0f;
        }
        float* dsr = dss + row * (ATT_TILE + 1);
        for (int kt = 0; kt * ATT_TILE < k_end; kt++) {
            if (att_skipped(mk, mask_blocks, mask_block, qt, kt)) {
                continue;
            }
            int cols = min(ATT_TILE, lk - kt * ATT_TILE);
            __syncthreads();  // the previous tile's K, V and dS are no longer read
            att_load_tile(ks, k + ok, k_start + (long long) kt * ATT_TILE, cols, ldk, g, hs);
            att_load_tile(vs, v + ov, k_start + (long long) kt * ATT_TILE, cols, ldk, g, hs);
            __syncthreads();
            int allowed = row < rows && li != -INFINITY ? (causal ? max(0, min(cols, i + off - kt * ATT_TILE + 1)) : cols) : 0;
#pragma unroll 4
            for (int t = 0; t < ATT_TILE / 4; t++) {
                int jj = sub + 4 * t;
                float ds = 0.0f;
                if (jj < allowed) {
                    float s = 0.0f;
                    float dp = 0.0f;
                    for (int d = 0; d < hs; d++) {
                        s = fmaf(qs[row * ldsh + d], ks[jj * ldsh + d], s);
                        dp = fmaf(dos[row * ldsh + d], vs[jj * ldsh + d], dp);
                    }
                    float p = expf(scale * s - li);
                    ds = p * (dp - di);
                }
                dsr[jj] = ds;
            }
            __syncwarp();
#pragma unroll
            for (int t = 0; t < ATT_DPT; t++) {
                int d = sub + 4 * t;
                if (d < hs) {
                    float a = acc[t];
                    for (int jj = 0; jj < cols; jj++) {
                        a = fmaf(dsr[jj], ks[jj * ldsh + d], a);
                    }
                    acc[t] = a;
                }
            }
        }
        if (row < rows) {
            float* dst = dq + odq + r * ldq + (long long) h * hs;
#pragma unroll
            for (int t = 0; t < ATT_DPT; t++) {
                int d = sub + 4 * t;
                if (d < hs) {
                    dst[d] += scale * acc[t];
                }
            }
        }
        __syncthreads();  // the next sequence reloads the Q and dO tiles
    }
}

// ---- bias gradient ----

// out[c] += Σ_n x[n, c]: one thread per column, rows in order, summed in double and rounded once; a warp's
// threads read neighbouring columns of each row, so loads coalesce.
extern "C" __global__ void add_column_sums_f32(float* out, int oo, const float* x, int ox, int rows, int cols) {
    GRID_STRIDE(c, cols) {
        double s = 0;
        for (int r = 0; r < rows; r++) {
            s += x[ox + (long long) r * cols + c];
        }
        out[oo + c] = __fadd_rn(out[oo + c], (float) s);
    }
}
