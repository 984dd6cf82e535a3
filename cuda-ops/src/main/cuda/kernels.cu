// Kindling's CUDA kernels, compiled by build-kernels.sh into one fatbin that CudaKernels loads with
// cuModuleLoadData. Every tensor arrives as its storage's base pointer plus an element offset, so
// views need no pointer arithmetic on the host. Loops are grid-stride; sums run in a fixed order
// (one block, fixed per-thread ranges, a fixed tree), so results do not depend on scheduling.
#include <stdint.h>

#define GRID_STRIDE(i, n) for (long long i = blockIdx.x * (long long) blockDim.x + threadIdx.x; i < (n); \
                               i += (long long) blockDim.x * gridDim.x)

__device__ __forceinline__ unsigned short bf16_from_float(float f) {
    unsigned int bits = __float_as_uint(f);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        return (unsigned short) ((bits >> 16) | 0x40u);  // keep NaN a quiet NaN, as BF16.fromFloat
    }
    return (unsigned short) ((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

__device__ __forceinline__ float bf16_to_float(unsigned short h) {
    return __uint_as_float(((unsigned int) h) << 16);
}

extern "C" __global__ void fill_f32(float* out, int oo, int n, float value) {
    GRID_STRIDE(i, n) { out[oo + i] = value; }
}

extern "C" __global__ void fill_i32(int* out, int oo, int n, int value) {
    GRID_STRIDE(i, n) { out[oo + i] = value; }
}

extern "C" __global__ void fill_bf16(unsigned short* out, int oo, int n, float value) {
    unsigned short h = bf16_from_float(value);
    GRID_STRIDE(i, n) { out[oo + i] = h; }
}

extern "C" __global__ void f32_to_bf16(unsigned short* dst, int od, const float* src, int os, int n) {
    GRID_STRIDE(i, n) { dst[od + i] = bf16_from_float(src[os + i]); }
}

extern "C" __global__ void bf16_to_f32(float* dst, int od, const unsigned short* src, int os, int n) {
    GRID_STRIDE(i, n) { dst[od + i] = bf16_to_float(src[os + i]); }
}

extern "C" __global__ void affine_f32(float* out, int oo, const float* x, int ox, int n, float alpha, float beta) {
    // Explicit rounding steps: alpha·x + beta as the CPU computes it, never contracted to an FMA.
    GRID_STRIDE(i, n) { out[oo + i] = __fadd_rn(__fmul_rn(alpha, x[ox + i]), beta); }
}

// Op codes follow org.kindling.ops.UnaryOp's ordinals; transcendentals in double, rounded once, as the CPU does.
extern "C" __global__ void unary_f32(int op, float* out, int oo, const float* x, int ox, int n) {
    GRID_STRIDE(i, n) {
        float v = x[ox + i];
        float r;
        switch (op) {
            case 0: r = v; break;                                   // COPY
            case 1: r = -v; break;                                  // NEG
            case 2: r = fabsf(v); break;                            // ABS
            case 3: r = __fmul_rn(v, v); break;                     // SQUARE
            case 4: r = (float) sqrt((double) v); break;            // SQRT
            case 5: r = __fdiv_rn(1.0f, v); break;                  // RECIPROCAL
            case 6: r = (float) exp((double) v); break;             // EXP
            case 7: r = (float) log((double) v); break;             // LOG
            case 8: r = (float) tanh((double) v); break;            // TANH
            case 9: r = (float) (1.0 / (1.0 + exp(-(double) v))); break;  // SIGMOID
            case 10: r = v > 0.0f ? v : 0.0f; break;                // RELU
            case 11: r = v > 0.0f ? __fadd_rn(v, 1.0f) : (float) exp((double) v); break;  // ELU_PLUS_ONE
            default: r = (float) cos((double) v); break;            // COS
        }
        out[oo + i] = r;
    }
}

// Op codes follow org.kindling.ops.BinaryOp's ordinals. b repeats every `period` elements: period == n is
// elementwise, period == the row length broadcasts one row of b over every row of a.
extern "C" __global__ void binary_f32(int op, float* out, int oo, const float* a, int oa, const float* b, int ob,
                                      int n, int period) {
    GRID_STRIDE(i, n) {
        float x = a[oa + i];
        float y = b[ob + (int) (i % period)];
        float r;
        switch (op) {
            case 0: r = __fadd_rn(x, y); break;
            case 1: r = __fsub_rn(x, y); break;
            case 2: r = __fmul_rn(x, y); break;
            case 3: r = __fdiv_rn(x, y); break;
            case 4: r = fmaxf(x, y); break;
            default: r = fminf(x, y); break;
        }
        out[oo + i] = r;
    }
}

// One thread per row, columns in order, sums in double: op 0 SUM, 1 MEAN, 2 MAX, 3 LOG_SUM_EXP (ReduceOp's ordinals).
extern "C" __global__ void reduce_rows_f32(int op, float* out, int oo, const float* x, int ox, int rows, int cols) {
    GRID_STRIDE(r, rows) {
        const float* row = x + ox + r * (long long) cols;
        if (op == 2 || op == 3) {
            float m = -INFINITY;
            for (int c = 0; c < cols; c++) {
                m = fmaxf(m, row[c]);
            }
            if (op == 2 || isinf(m)) {
                out[oo + r] = m;
                continue;
            }
            double s = 0;
            for (int c = 0; c < cols; c++) {
                s += exp((double) row[c] - m);
            }
            out[oo + r] = (float) (m + log(s));
        } else {
            double s = 0;
            for (int c = 0; c < cols; c++) {
                s += row[c];
            }
            out[oo + r] = (float) (op == 1 ? s / cols : s);
        }
    }
}

#define SUM_THREADS 256

// Σ x (or Σ x²) in double by ONE block: thread t sums elements t, t + 256, … in order (neighbouring
// threads read neighbouring elements, so loads coalesce), then a fixed tree combines the threads'
// sums: the same order on every run. If out is set, out[oo] += (float) (scale·Σ); if total is set, *total = Σ.
extern "C" __global__ void block_sum_f32(const float* x, int ox, int n, int squares, float* out, int oo, float scale,
                                         double* total) {
    __shared__ double partial[SUM_THREADS];
    int t = threadIdx.x;
    double s = 0;
    for (long long i = t; i < n; i += SUM_THREADS) {
        double v = x[ox + i];
        s += squares ? v * v : v;
    }
    partial[t] = s;
    __syncthreads();
    for (int stride = SUM_THREADS / 2; stride > 0; stride >>= 1) {
        if (t < stride) {
            partial[t] += partial[t + stride];
        }
        __syncthreads();
    }
    if (t == 0) {
        if (out != nullptr) {
            out[oo] = __fadd_rn(out[oo], (float) (scale * partial[0]));
        }
        if (total != nullptr) {
            *total = partial[0];
        }
    }
}

#include "gemm.cu"
#include "nn.cu"
#include "moe.cu"
#include "attention.cu"
#include "ssm.cu"
