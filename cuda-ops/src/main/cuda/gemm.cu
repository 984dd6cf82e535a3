// Kindling's GEMM (included at the end of kernels.cu): row-major C = alpha·op(A)·op(B) + beta·C over
// org.kindling.ops.Gemm layouts. Each block owns one 128×128 tile of C and walks K in a fixed order, so
// results are deterministic (no split-K, no atomics). beta == 0 never reads C, so C may hold NaNs.
// fp32 operands use CUDA cores (one FMA chain per element); bf16 operands use tensor cores (WMMA
// 16×16×16 bf16 fragments, fp32 accumulation). Out-of-range tile elements load as zero, so any size works.
#include <mma.h>
#include <cuda_bf16.h>

#define GEMM_BM 128
#define GEMM_BN 128
#define GEMM_THREADS 256

// Element (row, col) of op(X) for a row-major X with leading dimension ld: X[col][row] when transposed.
__device__ __forceinline__ long long gemm_index(int trans, int row, int col, int ld) {
    return trans ? (long long) col * ld + row : (long long) row * ld + col;
}

__device__ __forceinline__ void gemm_store(float* c, int ldc, int m, int n, int i, int j, float acc, float alpha,
                                           float beta) {
    if (i < m && j < n) {
        float* p = c + (long long) i * ldc + j;
        *p = beta == 0.0f ? alpha * acc : alpha * acc + beta * *p;
    }
}

#define GEMM_F32_BK 8

// 256 threads as 16×16; thread (ty, tx) accumulates rows ty + 16·r and columns tx + 16·s (r, s < 8) of the
// tile, so a warp's smem reads are broadcasts (A) or consecutive (B), and its C stores are coalesced.
// Operand tiles are read with the contiguous index fastest, whichever way the operand is transposed.
extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
gemm_f32(int transA, int transB, int m, int n, int k, float alpha, float beta, int batch,
         const float* a, int oa, int lda, long long sa, const float* b, int ob, int ldb, long long sb,
         float* c, int oc, int ldc, long long sc) {
    __shared__ float As[GEMM_F32_BK][GEMM_BM + 4];
    __shared__ float Bs[GEMM_F32_BK][GEMM_BN + 4];
    int tid = threadIdx.x;
    int tx = tid % 16;
    int ty = tid / 16;
    int tilesM = (m + GEMM_BM - 1) / GEMM_BM;
    int tilesN = (n + GEMM_BN - 1) / GEMM_BN;
    for (int z = blockIdx.z; z < batch; z += gridDim.z) {
        const float* A = a + oa + z * sa;
        const float* B = b + ob + z * sb;
        float* C = c + oc + z * sc;
        for (int tm = blockIdx.y; tm < tilesM; tm += gridDim.y) {
            for (int tn = blockIdx.x; tn < tilesN; tn += gridDim.x) {
                int i0 = tm * GEMM_BM;
                int j0 = tn * GEMM_BN;
                float acc[8][8];
#pragma unroll
                for (int r = 0; r < 8; r++) {
#pragma unroll
                    for (int s = 0; s < 8; s++) {
                        acc[r][s] = 0.0f;
                    }
                }
                for (int p0 = 0; p0 < k; p0 += GEMM_F32_BK) {
                    for (int e = tid; e < GEMM_BM * GEMM_F32_BK; e += GEMM_THREADS) {
                        int i = transA ? e % GEMM_BM : e / GEMM_F32_BK;
                        int p = transA ? e / GEMM_BM : e % GEMM_F32_BK;
                        int gi = i0 + i;
                        int gp = p0 + p;
                        As[p][i] = gi < m && gp < k ? A[gemm_index(transA, gi, gp, lda)] : 0.0f;
                    }
                    for (int e = tid; e < GEMM_BN * GEMM_F32_BK; e += GEMM_THREADS) {
                        int j = transB ? e / GEMM_F32_BK : e % GEMM_BN;
                        int p = transB ? e % GEMM_F32_BK : e / GEMM_BN;
                        int gj = j0 + j;
                        int gp = p0 + p;
                        Bs[p][j] = gj < n && gp < k ? B[gemm_index(transB, gp, gj, ldb)] : 0.0f;
                    }
                    __syncthreads();
#pragma unroll
                    for (int p = 0; p < GEMM_F32_BK; p++) {
                        float av[8];
                        float bv[8];
#pragma unroll
                        for (int r = 0; r < 8; r++) {
                            av[r] = As[p][ty + 16 * r];
                            bv[r] = Bs[p][tx + 16 * r];
                        }
#pragma unroll
                        for (int r = 0; r < 8; r++) {
#pragma unroll
                            for (int s = 0; s < 8; s++) {
                                acc[r][s] = fmaf(av[r], bv[s], acc[r][s]);
                            }
                        }
                    }
                    __syncthreads();
                }
#pragma unroll
                for (int r = 0; r < 8; r++) {
#pragma unroll
                    for (int s = 0; s < 8; s++) {
                        gemm_store(C, ldc, m, n, i0 + ty + 16 * r, j0 + tx + 16 * s, acc[r][s], alpha, beta);
                    }
                }
            }
        }
    }
}

#define GEMM_BF16_BK 32
#define GEMM_BF16_LDA (GEMM_BF16_BK + 8)  // row padding against bank conflicts; WMMA needs a multiple of 8
#define GEMM_BF16_LDB (GEMM_BN + 8)

// 8 warps as 2×4; warp (wm, wn) owns the 64×32 sub-tile at rows 64·wm, columns 32·wn: 4×2 accumulator
// fragments. The A tile is stored row-major [128][BK], the B tile row-major [BK][128], both padded.
// Each warp writes its fragments out through its own 16×16 fp32 scratch, so the edges are masked.
extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
gemm_bf16(int transA, int transB, int m, int n, int k, float alpha, float beta, int batch,
          const unsigned short* a, int oa, int lda, long long sa, const unsigned short* b, int ob, int ldb, long long sb,
          float* c, int oc, int ldc, long long sc) {
    using namespace nvcuda;
    __shared__ __align__(32) __nv_bfloat16 As[GEMM_BM * GEMM_BF16_LDA];
    __shared__ __align__(32) __nv_bfloat16 Bs[GEMM_BF16_BK * GEMM_BF16_LDB];
    __shared__ __align__(32) float scratch[GEMM_THREADS / 32][16 * 16];
    int tid = threadIdx.x;
    int warp = tid / 32;
    int lane = tid % 32;
    int wm = warp / 4;
    int wn = warp % 4;
    int tilesM = (m + GEMM_BM - 1) / GEMM_BM;
    int tilesN = (n + GEMM_BN - 1) / GEMM_BN;
    const __nv_bfloat16 zero = __ushort_as_bfloat16((unsigned short) 0);
    for (int z = blockIdx.z; z < batch; z += gridDim.z) {
        const unsigned short* A = a + oa + z * sa;
        const unsigned short* B = b + ob + z * sb;
        float* C = c + oc + z * sc;
        for (int tm = blockIdx.y; tm < tilesM; tm += gridDim.y) {
            for (int tn = blockIdx.x; tn < tilesN; tn += gridDim.x) {
                int i0 = tm * GEMM_BM;
                int j0 = tn * GEMM_BN;
                wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4][2];
#pragma unroll
                for (int r = 0; r < 4; r++) {
#pragma unroll
                    for (int s = 0; s < 2; s++) {
                        wmma::fill_fragment(acc[r][s], 0.0f);
                    }
                }
                for (int p0 = 0; p0 < k; p0 += GEMM_BF16_BK) {
                    for (int e = tid; e < GEMM_BM * GEMM_BF16_BK; e += GEMM_THREADS) {
                        int i = transA ? e % GEMM_BM : e / GEMM_BF16_BK;
                        int p = transA ? e / GEMM_BM : e % GEMM_BF16_BK;
                        int gi = i0 + i;
                        int gp = p0 + p;
                        As[i * GEMM_BF16_LDA + p] = gi < m && gp < k
                                ? __ushort_as_bfloat16(A[gemm_index(transA, gi, gp, lda)]) : zero;
                    }
                    for (int e = tid; e < GEMM_BN * GEMM_BF16_BK; e += GEMM_THREADS) {
                        int j = transB ? e / GEMM_BF16_BK : e % GEMM_BN;
                        int p = transB ? e % GEMM_BF16_BK : e / GEMM_BN;
                        int gj = j0 + j;
                        int gp = p0 + p;
                        Bs[p * GEMM_BF16_LDB + j] = gj < n && gp < k
                                ? __ushort_as_bfloat16(B[gemm_index(transB, gp, gj, ldb)]) : zero;
                    }
                    __syncthreads();
#pragma unroll
                    for (int kk = 0; kk < GEMM_BF16_BK; kk += 16) {
                        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa[4];
                        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb[2];
#pragma unroll
                        for (int r = 0; r < 4; r++) {
                            wmma::load_matrix_sync(fa[r], As + (wm * 64 + r * 16) * GEMM_BF16_LDA + kk, GEMM_BF16_LDA);
                        }
#pragma unroll
                        for (int s = 0; s < 2; s++) {
                            wmma::load_matrix_sync(fb[s], Bs + kk * GEMM_BF16_LDB + wn * 32 + s * 16, GEMM_BF16_LDB);
                        }
#pragma unroll
                        for (int r = 0; r < 4; r++) {
#pragma unroll
                            for (int s = 0; s < 2; s++) {
                                wmma::mma_sync(acc[r][s], fa[r], fb[s], acc[r][s]);
                            }
                        }
                    }
                    __syncthreads();
                }
                float* mine = scratch[warp];
#pragma unroll
                for (int r = 0; r < 4; r++) {
#pragma unroll
                    for (int s = 0; s < 2; s++) {
                        wmma::store_matrix_sync(mine, acc[r][s], 16, wmma::mem_row_major);
                        __syncwarp();
                        for (int e = lane; e < 16 * 16; e += 32) {
                            gemm_store(C, ldc, m, n, i0 + wm * 64 + r * 16 + e / 16, j0 + wn * 32 + s * 16 + e % 16,
                                       mine[e], alpha, beta);
                        }
                        __syncwarp();
                    }
                }
            }
        }
    }
}
