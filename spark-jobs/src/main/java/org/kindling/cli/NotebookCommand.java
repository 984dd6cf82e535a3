package org.kindling.cli;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import java.util.concurrent.TimeUnit;
import org.kindling.notebook.KernelSpec;
import picocli.CommandLine.Command;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.ParameterException;
import picocli.CommandLine.Spec;

@Command(name = "notebook", mixinStandardHelpOptions = true,
        description = {"Install the \"Kindling (Java)\" Jupyter kernel (JShell with Kindling and Spark on its classpath) "
                + "into the user's Jupyter data dir, then start Jupyter Notebook on 127.0.0.1 in the notebooks folder.",
            "Needs Jupyter: apt-get install -y jupyter-notebook jupyter-nbconvert (Debian/Ubuntu)."})
final class NotebookCommand implements Callable<Integer> {
    static final String INSTALL_HINT = "apt-get install -y jupyter-notebook jupyter-nbconvert (Debian/Ubuntu)";
    private static final long JUPYTER_QUERY_SECONDS = 60;
    private static final long SERVER_STOP_SECONDS = 15;

    @Spec
    CommandSpec spec;

    @Option(names = "--no-browser", description = "Do not open a browser.")
    boolean noBrowser;

    @Option(names = "--port", defaultValue = "8888", description = "Port of the notebook server on 127.0.0.1 (default: ${DEFAULT-VALUE}).")
    int port;

    @Option(names = "--dir", description = "Folder the notebook server opens (default: the notebooks/ folder of this Kindling, created when missing).")
    Path dir;

    @Option(names = "--allow-root", description = "Let Jupyter run as root (containers), which it refuses by default.")
    boolean allowRoot;

    @Option(names = "--install-only", description = "Install the kernel spec and exit without starting Jupyter.")
    boolean installOnly;

    @Option(names = "--jupyter", defaultValue = "jupyter", description = "The jupyter command (default: ${DEFAULT-VALUE}).")
    String jupyter;

    @Override
    public Integer call() throws IOException, InterruptedException {
        if (port < 1 || port > 65535) {
            throw new ParameterException(spec.commandLine(), "--port " + port + " is not a port in 1..65535");
        }
        Path notebooks = dir != null ? dir : Path.of(System.getProperty("kindling.home", "."), "notebooks");
        if (dir == null && !installOnly) {
            Files.createDirectories(notebooks);
        }
        if (!installOnly && !Files.isDirectory(notebooks)) {
            throw new ParameterException(spec.commandLine(), "--dir " + notebooks + " is not a folder");
        }
        Path dataDir = Path.of(query(jupyter, "--data-dir"));
        Path installed = KernelSpec.forThisJvm(kernelJvmFlags(), kernelEnv()).install(dataDir);
        System.err.println("kindling notebook: installed kernel \"" + KernelSpec.DISPLAY_NAME + "\" in " + installed);
        if (installOnly) {
            return 0;
        }
        List<String> cmd = new ArrayList<>(List.of(jupyter, "notebook", "--ip=127.0.0.1", "--port=" + port,
                "--notebook-dir=" + notebooks.toAbsolutePath().normalize()));
        if (noBrowser) {
            cmd.add("--no-browser");
        }
        if (allowRoot) {
            cmd.add("--allow-root");
        }
        Process server = new ProcessBuilder(cmd).inheritIO().start();
        // A SIGTERM or Ctrl-C to this JVM takes the server (and through it the kernels) down too, never orphaning it.
        Thread stopServer = new Thread(() -> stop(server), "stop-jupyter");
        Runtime.getRuntime().addShutdownHook(stopServer);
        // The server runs until the user stops it: no deadline on this wait.
        int code = server.waitFor();
        Runtime.getRuntime().removeShutdownHook(stopServer);
        return code;
    }

    /** SIGTERM (Jupyter then shuts its kernels down), SIGKILL if it has not exited within the grace period. */
    private static void stop(Process server) {
        server.destroy();
        try {
            if (!server.waitFor(SERVER_STOP_SECONDS, TimeUnit.SECONDS)) {
                server.destroyForcibly();
            }
        } catch (InterruptedException e) {
            server.destroyForcibly();
            Thread.currentThread().interrupt();
        }
    }

    /** bin/kindling's JVM flags, and where Kindling and its log configuration are, for the kernel's JVM. */
    static List<String> kernelJvmFlags() {
        List<String> flags = new ArrayList<>(Arrays.asList(BuildInfo.jvmFlags().strip().split("\\s+")));
        for (String property : List.of("kindling.home", "log4j.configurationFile")) {
            String value = System.getProperty(property);
            if (value != null) {
                flags.add("-D" + property + "=" + value);
            }
        }
        return flags;
    }

    /** What bin/kindling exports for every command: one OpenBLAS thread, Spark on loopback. */
    static Map<String, String> kernelEnv() {
        Map<String, String> env = new LinkedHashMap<>();
        env.put("OPENBLAS_NUM_THREADS", "1");
        env.put("SPARK_LOCAL_IP", System.getenv().getOrDefault("SPARK_LOCAL_IP", "127.0.0.1"));
        return env;
    }

    /** One line that {@code jupyter ARGS} prints; a missing jupyter says how to install it. */
    private static String query(String jupyter, String... args) throws IOException, InterruptedException {
        List<String> cmd = new ArrayList<>(List.of(jupyter));
        cmd.addAll(List.of(args));
        Process p;
        try {
            p = new ProcessBuilder(cmd).redirectError(ProcessBuilder.Redirect.INHERIT).start();
        } catch (IOException e) {
            throw new IOException("jupyter is not installed (" + e.getMessage() + "); install it with " + INSTALL_HINT);
        }
        if (!p.waitFor(JUPYTER_QUERY_SECONDS, TimeUnit.SECONDS)) {
            p.destroyForcibly();
            throw new IOException(String.join(" ", cmd) + " did not answer within " + JUPYTER_QUERY_SECONDS + " s");
        }
        String out = new String(p.getInputStream().readNBytes(64 * 1024), StandardCharsets.UTF_8).strip();
        if (p.exitValue() != 0 || out.isEmpty()) {
            throw new IOException(String.join(" ", cmd) + " failed (exit " + p.exitValue() + "); is Jupyter installed? "
                    + INSTALL_HINT);
        }
        return out;
    }
}
