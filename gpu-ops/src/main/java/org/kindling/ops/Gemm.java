package org.kindling.ops;

/**
 * The layout of one row-major matrix product {@code C = alpha * op(A) * op(B) + beta * C}, where
 * {@code op(A)} is M×K, {@code op(B)} is K×N and C is M×N. Leading dimensions are row strides in
 * elements; a batched product adds the element stride between consecutive A, B and C matrices.
 * All checks happen here, once.
 *
 * @param transA {@code op(A) = A^T}: A is stored K×M
 * @param transB {@code op(B) = B^T}: B is stored N×K
 */
public record Gemm(boolean transA, boolean transB, int m, int n, int k, int lda, int ldb, int ldc,
                   float alpha, float beta, int batch, long strideA, long strideB, long strideC) {

    public Gemm {
        if (m < 0 || n < 0 || k < 0) {
            throw new IllegalArgumentException("gemm sizes must be non-negative: m=" + m + " n=" + n + " k=" + k);
        }
        if (lda < Math.max(1, transA ? m : k)) {
            throw new IllegalArgumentException("gemm lda=" + lda + " is less than the row length " + (transA ? m : k) + " of A");
        }
        if (ldb < Math.max(1, transB ? k : n)) {
            throw new IllegalArgumentException("gemm ldb=" + ldb + " is less than the row length " + (transB ? k : n) + " of B");
        }
        if (ldc < Math.max(1, n)) {
            throw new IllegalArgumentException("gemm ldc=" + ldc + " is less than the row length " + n + " of C");
        }
        if (batch < 1) {
            throw new IllegalArgumentException("gemm batch must be at least 1, got " + batch);
        }
        if (strideA < 0 || strideB < 0 || strideC < 0) {
            throw new IllegalArgumentException("gemm strides must be non-negative");
        }
        if (batch > 1 && strideC < (long) (m - 1) * ldc + n) {
            throw new IllegalArgumentException("gemm strideC=" + strideC + " makes the C matrices of a batch overlap");
        }
    }

    /** A single tightly packed product: lda, ldb and ldc equal the stored row lengths. */
    public static Gemm of(boolean transA, boolean transB, int m, int n, int k) {
        return new Gemm(transA, transB, m, n, k, Math.max(1, transA ? m : k), Math.max(1, transB ? k : n),
                Math.max(1, n), 1f, 0f, 1, 0, 0, 0);
    }

    /** {@code batch} tightly packed products stored one after another. */
    public static Gemm batched(int batch, boolean transA, boolean transB, int m, int n, int k) {
        Gemm g = of(transA, transB, m, n, k);
        return g.strided(batch, (long) m * k, (long) k * n, (long) m * n);
    }

    public Gemm scaled(float alpha, float beta) {
        return new Gemm(transA, transB, m, n, k, lda, ldb, ldc, alpha, beta, batch, strideA, strideB, strideC);
    }

    public Gemm leading(int lda, int ldb, int ldc) {
        return new Gemm(transA, transB, m, n, k, lda, ldb, ldc, alpha, beta, batch, strideA, strideB, strideC);
    }

    public Gemm strided(int batch, long strideA, long strideB, long strideC) {
        return new Gemm(transA, transB, m, n, k, lda, ldb, ldc, alpha, beta, batch, strideA, strideB, strideC);
    }

    /** Elements one A matrix spans from its first to its last element. */
    public long spanA() {
        return span(transA ? k : m, transA ? m : k, lda);
    }

    public long spanB() {
        return span(transB ? n : k, transB ? k : n, ldb);
    }

    public long spanC() {
        return span(m, n, ldc);
    }

    private static long span(int rows, int cols, int ld) {
        return rows == 0 || cols == 0 ? 0 : (long) (rows - 1) * ld + cols;
    }

    /** Multiply-adds times two: the FLOP count of the whole (batched) product. */
    public double flops() {
        return 2.0 * m * n * k * batch;
    }
}
