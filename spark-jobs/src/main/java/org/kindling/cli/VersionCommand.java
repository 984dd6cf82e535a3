package org.kindling.cli;

import java.util.concurrent.Callable;
import org.kindling.ops.Device;
import org.kindling.ops.cpu.CpuDevice;
import picocli.CommandLine.Command;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Spec;

@Command(name = "version", mixinStandardHelpOptions = true,
        description = "Print the Kindling version and the runtime it found (Java, Spark, CPU GEMM, devices).")
final class VersionCommand implements Callable<Integer> {
    @Spec
    CommandSpec spec;

    @Override
    public Integer call() {
        String gemm = gemmImpl();
        var out = spec.commandLine().getOut();
        out.println("kindling " + BuildInfo.version());
        out.println("java " + Runtime.version() + " (" + System.getProperty("java.vendor") + ")");
        out.println("spark " + runtimeSparkVersion() + " (built against " + BuildInfo.sparkVersion() + ")");
        out.println("cpu gemm " + gemm + ", " + Runtime.getRuntime().availableProcessors() + " cores");
        out.println("devices " + devices());
        out.flush();
        return 0;
    }

    /** The device providers in this build, each with why it cannot open here when it cannot: "cpu, reference". */
    static String devices() {
        return String.join(", ", Device.providers().stream()
                .map(p -> p.name() + p.unavailable().map(why -> " (unavailable: " + why + ")").orElse(""))
                .toList());
    }

    /** Which GEMM the CPU backend runs: openblas, native, vector or java. */
    static String gemmImpl() {
        try (CpuDevice cpu = CpuDevice.open(1)) {
            return cpu.backend().gemmImpl();
        }
    }

    /** One line for the log: which GEMM runs and, when it is not a native BLAS, how to get one. */
    static String gemmNotice() {
        String impl = gemmImpl();
        return switch (impl) {
            case "openblas", "native" -> "CPU GEMM: " + impl + " BLAS";
            default -> "CPU GEMM: " + impl + " (no native BLAS found as libblas.so.3; `apt-get install libopenblas0` "
                    + "on Debian/Ubuntu makes CPU training about twice as fast)";
        };
    }

    /** The Spark on the classpath now: the cluster's under spark-submit, the bundled one under bin/kindling. */
    static String runtimeSparkVersion() {
        try {
            Class<?> pkg = Class.forName("org.apache.spark.package$");
            Object module = pkg.getField("MODULE$").get(null);
            return (String) pkg.getMethod("SPARK_VERSION").invoke(module);
        } catch (ReflectiveOperationException | LinkageError e) {
            return "not on the classpath";
        }
    }
}
