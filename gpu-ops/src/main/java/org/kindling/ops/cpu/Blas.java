package org.kindling.ops.cpu;

import dev.ludovic.netlib.blas.BLAS;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;

/** Row-major single-precision GEMM over netlib BLAS (OpenBLAS through JNI when present, else the Vector API). */
final class Blas {
    private static final System.Logger LOG = System.getLogger(Blas.class.getName());
    private static final BLAS INSTANCE = BLAS.getInstance();
    static final String IMPL = describe(INSTANCE);

    static {
        String threads = System.getenv("OPENBLAS_NUM_THREADS");
        if (IMPL.equals("openblas") && !"1".equals(threads)) {
            // OpenBLAS reads it once, as it loads: too late to change from Java, so say what to do.
            LOG.log(System.Logger.Level.WARNING, "OPENBLAS_NUM_THREADS is " + (threads == null ? "unset" : threads) + ": OpenBLAS "
                    + "may start threads of its own on top of Kindling's and oversubscribe the cores; set OPENBLAS_NUM_THREADS=1 "
                    + "(bin/kindling does, and kindling's Spark sessions set spark.executorEnv.OPENBLAS_NUM_THREADS=1)");
        }
    }

    private Blas() {
    }

    private static String describe(BLAS blas) {
        String cls = blas.getClass().getSimpleName();
        if (cls.startsWith("JNI")) {
            try {
                return Files.readString(Path.of("/proc/self/maps")).contains("openblas") ? "openblas" : "native";
            } catch (IOException | RuntimeException e) {
                return "native";
            }
        }
        return cls.startsWith("Vector") ? "vector" : "java";
    }

    /**
     * C[m×n] = alpha·op(A)·op(B) + beta·C with row-major operands. Row-major C = op(A)·op(B) is
     * column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, so the operands swap on the way to BLAS.
     */
    static void sgemm(boolean transA, boolean transB, int m, int n, int k, float alpha, float[] a, int oa, int lda,
                      float[] b, int ob, int ldb, float beta, float[] c, int oc, int ldc) {
        if (m == 0 || n == 0) {
            return;
        }
        if (k == 0 || alpha == 0f) {
            for (int i = 0; i < m; i++) {
                int row = oc + i * ldc;
                for (int j = 0; j < n; j++) {
                    c[row + j] = beta == 0f ? 0f : beta * c[row + j];
                }
            }
            return;
        }
        INSTANCE.sgemm(transB ? "T" : "N", transA ? "T" : "N", n, m, k, alpha, b, ob, ldb, a, oa, lda, beta, c, oc, ldc);
    }
}
