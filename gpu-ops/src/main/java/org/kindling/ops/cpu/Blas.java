package org.kindling.ops.cpu;

import dev.ludovic.netlib.blas.BLAS;
import dev.ludovic.netlib.blas.JavaBLAS;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;

/** Row-major single-precision GEMM over netlib BLAS (OpenBLAS through JNI when present, else the Vector API). */
final class Blas {
    private static final System.Logger LOG = System.getLogger(Blas.class.getName());
    private static final BLAS INSTANCE = nativeLibraryPresent() ? BLAS.getInstance() : javaBlas();
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

    /**
     * Whether the native BLAS netlib would load is on the library path. Looked up here because
     * netlib's own attempt prints a dlopen error to stderr from native code when it is missing.
     * Off Linux (no ld.so.conf) netlib decides as before.
     */
    private static boolean nativeLibraryPresent() {
        String path = System.getProperty("dev.ludovic.netlib.blas.nativeLibPath");
        if (path != null) {
            return Files.isReadable(Path.of(path));
        }
        String name = System.getProperty("dev.ludovic.netlib.blas.nativeLib", "libblas.so.3");
        if (name.contains("/")) {
            return Files.isReadable(Path.of(name));
        }
        Path conf = Path.of("/etc/ld.so.conf");
        if (!Files.exists(conf)) {
            return true;
        }
        return libraryDirectories(conf).stream().anyMatch(dir -> Files.isReadable(dir.resolve(name)));
    }

    /**
     * netlib's pure-Java BLAS, taken directly: its public entry point initialises the native one
     * first (and prints that dlopen error). Vector API first, as netlib itself prefers.
     */
    private static BLAS javaBlas() {
        for (String cls : List.of("dev.ludovic.netlib.blas.VectorBLAS", "dev.ludovic.netlib.blas.Java11BLAS")) {
            try {
                java.lang.reflect.Method instance = Class.forName(cls).getMethod("getInstance");
                instance.setAccessible(true);
                BLAS blas = (BLAS) instance.invoke(null);
                if (blas != null) {
                    return blas;
                }
            } catch (ReflectiveOperationException | LinkageError | RuntimeException e) {
                // Not usable in this JVM (e.g. no jdk.incubator.vector): try the next one.
            }
        }
        return JavaBLAS.getInstance();
    }

    /** LD_LIBRARY_PATH, the ld.so.conf directories (one level of includes) and the default ones. */
    private static List<Path> libraryDirectories(Path conf) {
        List<Path> dirs = new ArrayList<>();
        String env = System.getenv("LD_LIBRARY_PATH");
        if (env != null) {
            Stream.of(env.split(":")).filter(d -> !d.isEmpty()).map(Path::of).forEach(dirs::add);
        }
        List<Path> confs = new ArrayList<>(List.of(conf));
        try (Stream<Path> more = Files.list(Path.of("/etc/ld.so.conf.d"))) {
            more.filter(f -> f.toString().endsWith(".conf")).sorted().forEach(confs::add);
        } catch (IOException | RuntimeException e) {
            // No conf.d: the main file and the defaults still count.
        }
        for (Path f : confs) {
            try {
                Files.readAllLines(f).stream().map(String::strip).filter(l -> l.startsWith("/")).map(Path::of).forEach(dirs::add);
            } catch (IOException | RuntimeException e) {
                // An unreadable file adds no directories.
            }
        }
        Stream.of("/lib", "/usr/lib", "/lib64", "/usr/lib64").map(Path::of).forEach(dirs::add);
        return dirs;
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
