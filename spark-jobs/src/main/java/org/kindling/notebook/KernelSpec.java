package org.kindling.notebook;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** The Jupyter kernel spec ({@code kernels/kindling/kernel.json}) that starts {@link KindlingKernel}. */
public record KernelSpec(List<String> argv, Map<String, String> env) {
    public static final String NAME = "kindling";
    public static final String DISPLAY_NAME = "Kindling (Java)";

    public KernelSpec {
        argv = List.copyOf(argv);
        env = Map.copyOf(env);
    }

    /**
     * A spec that starts the kernel on this JVM's java, with {@code jvmFlags} and this JVM's
     * classpath (made absolute: Jupyter starts kernels in the notebook's folder).
     */
    public static KernelSpec forThisJvm(List<String> jvmFlags, Map<String, String> env) {
        List<String> argv = new ArrayList<>();
        argv.add(Path.of(System.getProperty("java.home"), "bin", "java").toString());
        argv.addAll(jvmFlags);
        argv.add("-Djava.awt.headless=true");
        argv.add("-cp");
        List<String> cp = new ArrayList<>();
        for (String entry : System.getProperty("java.class.path").split(java.io.File.pathSeparator)) {
            if (!entry.isEmpty()) {
                cp.add(Path.of(entry).toAbsolutePath().toString());
            }
        }
        argv.add(String.join(java.io.File.pathSeparator, cp));
        argv.add(KindlingKernel.class.getName());
        argv.add("{connection_file}");
        return new KernelSpec(argv, env);
    }

    /** kernel.json's text. */
    public String toJson() {
        ObjectMapper mapper = new ObjectMapper();
        ObjectNode json = mapper.createObjectNode();
        argv.forEach(json.putArray("argv")::add);
        json.put("display_name", DISPLAY_NAME);
        json.put("language", "java");
        // Interrupts arrive as messages, so the kernel interrupts the cell's thread rather than taking a SIGINT.
        json.put("interrupt_mode", "message");
        ObjectNode envNode = json.putObject("env");
        new LinkedHashMap<>(env).entrySet().stream().sorted(Map.Entry.comparingByKey())
                .forEach(e -> envNode.put(e.getKey(), e.getValue()));
        try {
            return mapper.writerWithDefaultPrettyPrinter().writeValueAsString(json) + "\n";
        } catch (IOException e) {
            throw new IllegalStateException("kernel.json could not be written as JSON", e);
        }
    }

    /** Writes {@code dataDir/kernels/kindling/kernel.json} (replacing an older one whole); returns its folder. */
    public Path install(Path dataDir) throws IOException {
        Path dir = dataDir.resolve("kernels").resolve(NAME);
        Files.createDirectories(dir);
        Path tmp = Files.createTempFile(dir, "kernel", ".json.tmp");
        Files.writeString(tmp, toJson(), StandardCharsets.UTF_8);
        Files.move(tmp, dir.resolve("kernel.json"), StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        return dir;
    }
}
