package org.kindling.notebook;

import static org.junit.jupiter.api.Assertions.assertEquals;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.stream.Stream;

/** Notebook files for the tests: the repository's notebooks/, writing one, executing one with nbconvert. */
final class Notebooks {
    static final Path ROOT = Path.of("..").toAbsolutePath().normalize();
    private static final ObjectMapper JSON = new ObjectMapper();

    private Notebooks() {
    }

    /** The committed notebooks (none while notebooks/ does not exist). */
    static List<Path> committed() throws IOException {
        Path dir = ROOT.resolve("notebooks");
        if (!Files.isDirectory(dir)) {
            return List.of();
        }
        try (Stream<Path> files = Files.list(dir)) {
            return files.filter(f -> f.getFileName().toString().endsWith(".ipynb")).sorted().toList();
        }
    }

    /** Where a notebook holds outputs or execution counts: "cell 3: 2 outputs"; empty when it holds none. */
    static List<String> outputsIn(Path notebook) throws IOException {
        List<String> found = new ArrayList<>();
        JsonNode cells = JSON.readTree(notebook.toFile()).path("cells");
        for (int i = 0; i < cells.size(); i++) {
            JsonNode cell = cells.get(i);
            if (cell.path("outputs").size() > 0) {
                found.add("cell " + i + ": " + cell.path("outputs").size() + " outputs");
            }
            if (cell.hasNonNull("execution_count")) {
                found.add("cell " + i + ": execution_count " + cell.get("execution_count"));
            }
        }
        return found;
    }

    /** A code cell; {@code raises} tags it as expected to fail, which nbconvert then allows. */
    static ObjectNode codeCell(String source, boolean raises) {
        ObjectNode cell = JSON.createObjectNode();
        cell.put("cell_type", "code");
        cell.putNull("execution_count");
        ObjectNode metadata = cell.putObject("metadata");
        if (raises) {
            metadata.putArray("tags").add("raises-exception");
        }
        cell.putArray("outputs");
        cell.put("source", source);
        return cell;
    }

    /** Writes an nbformat 4 notebook of {@code cells} for the Kindling kernel. */
    static void write(Path file, List<ObjectNode> cells) throws IOException {
        ObjectNode nb = JSON.createObjectNode();
        nb.put("nbformat", 4);
        nb.put("nbformat_minor", 5);
        ObjectNode kernelspec = nb.putObject("metadata").putObject("kernelspec");
        kernelspec.put("name", KernelSpec.NAME);
        kernelspec.put("display_name", KernelSpec.DISPLAY_NAME);
        kernelspec.put("language", "java");
        ArrayNode array = nb.putArray("cells");
        for (int i = 0; i < cells.size(); i++) {
            array.add(cells.get(i).put("id", "cell-" + i));
        }
        Files.writeString(file, JSON.writerWithDefaultPrettyPrinter().writeValueAsString(nb), StandardCharsets.UTF_8);
    }

    /** Runs a process with {@code env} added, failing the test when it exits non-zero or outlives {@code seconds}. */
    static String run(List<String> cmd, Map<String, String> env, long seconds) throws IOException, InterruptedException {
        Path log = Files.createTempFile("kindling-notebook", ".log");
        try {
            ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true).redirectOutput(log.toFile());
            pb.environment().putAll(env);
            Process p = pb.start();
            if (!p.waitFor(seconds, TimeUnit.SECONDS)) {
                p.descendants().forEach(ProcessHandle::destroyForcibly);
                p.destroyForcibly();
                throw new AssertionError(String.join(" ", cmd) + " did not finish in " + seconds + " s:\n" + Files.readString(log));
            }
            String out = Files.readString(log);
            assertEquals(0, p.exitValue(), String.join(" ", cmd) + " failed:\n" + out);
            return out;
        } finally {
            Files.deleteIfExists(log);
        }
    }

    /** The Python that runs {@code jupyter} (its #! line), which has jupyter_client. */
    static List<String> jupyterPython() throws IOException {
        for (String dir : System.getenv().getOrDefault("PATH", "").split(java.io.File.pathSeparator)) {
            Path jupyter = Path.of(dir, "jupyter");
            if (Files.isExecutable(jupyter)) {
                String first;
                try (var lines = Files.lines(jupyter)) {
                    first = lines.findFirst().orElse("");
                }
                if (!first.startsWith("#!")) {
                    throw new AssertionError(jupyter + " is not a script with a #! line: " + first);
                }
                return List.of(first.substring(2).strip().split("\\s+"));
            }
        }
        throw new AssertionError("jupyter is not on the PATH: apt-get install -y jupyter-notebook jupyter-nbconvert");
    }

    /** Executes a notebook top to bottom on the Kindling kernel; returns the executed copy (nbconvert fails on an unexpected error). */
    static JsonNode execute(Path notebook, Path outDir, Map<String, String> env) throws IOException, InterruptedException {
        run(List.of("jupyter", "nbconvert", "--to", "notebook", "--execute", "--ExecutePreprocessor.timeout=300",
                "--ExecutePreprocessor.startup_timeout=180", "--ExecutePreprocessor.kernel_name=" + KernelSpec.NAME,
                "--output-dir", outDir.toString(), notebook.toString()), env, 900);
        return JSON.readTree(outDir.resolve(notebook.getFileName()).toFile());
    }
}
