package org.kindling.cli;

import com.fasterxml.jackson.core.type.TypeReference;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import picocli.CommandLine;

/**
 * A peer benchmark: a script under {@code peers/} that does a bench's work in PyTorch (CPU) with the same shapes,
 * threads and timing rule, run in the same process tree as the bench so both figures come from the same minutes of
 * the same machine. It prints one JSON line with the bench's field names; that line is read back here.
 */
final class Peer {
    /** A peer that has not finished in this long is killed: every wait has a deadline. */
    static final long DEADLINE_SECONDS = 1800;
    /** Only this much of a peer's output is read back; its result is one short line. */
    private static final int MAX_OUTPUT_BYTES = 1 << 20;

    private final String python;

    private Peer(String python) {
        this.python = python;
    }

    /** The peer named by {@code --peer} (only {@code torch} exists), or null when none was asked for. */
    static Peer parse(CommandLine cmd, String name, String python) {
        if (name == null) {
            return null;
        }
        if (!name.equals("torch")) {
            throw new CommandLine.ParameterException(cmd, "--peer must be torch, got \"" + name + "\"");
        }
        if (python != null) {
            return new Peer(python);
        }
        String env = System.getenv("KINDLING_PYTHON");
        return new Peer(env != null && !env.isBlank() ? env : "python3");
    }

    /** The folder of the peer scripts: {@code peers/} under the Kindling home, or near the working directory. */
    static Path scripts() {
        List<Path> dirs = new ArrayList<>();
        String home = System.getProperty("kindling.home");
        if (home != null) {
            dirs.add(Path.of(home, "peers"));
        }
        dirs.add(Path.of("peers"));
        dirs.add(Path.of("..", "peers"));
        for (Path d : dirs) {
            if (Files.isDirectory(d)) {
                return d;
            }
        }
        throw new IllegalStateException("cannot find the peer scripts: none of " + dirs + " is a folder");
    }

    /** Runs {@code peers/script} with {@code args} (and --json); its stderr goes to the bench's; returns its JSON row. */
    Map<String, Object> run(CommandLine cmd, String script, Object... args) throws IOException, InterruptedException {
        Path file = scripts().resolve(script);
        if (!Files.isRegularFile(file)) {
            throw new IllegalStateException("peer script " + file + " is missing");
        }
        List<String> argv = new ArrayList<>(List.of(python, file.toString()));
        for (Object a : args) {
            argv.add(String.valueOf(a));
        }
        argv.add("--json");
        Path out = Files.createTempFile("kindling-peer", ".out");
        Path err = Files.createTempFile("kindling-peer", ".err");
        try {
            Process p;
            try {
                p = new ProcessBuilder(argv).redirectOutput(out.toFile()).redirectError(err.toFile()).start();
            } catch (IOException e) {
                throw new IllegalStateException("cannot run the peer's Python \"" + python + "\" (" + e.getMessage() + "); --peer torch "
                        + "needs Python 3 with PyTorch (Debian: python3-torch); name it with --python or KINDLING_PYTHON");
            }
            if (!p.waitFor(DEADLINE_SECONDS, TimeUnit.SECONDS)) {
                p.destroyForcibly().waitFor(10, TimeUnit.SECONDS);
                throw new IllegalStateException("peer " + script + " did not finish within " + DEADLINE_SECONDS + " s");
            }
            String stderr = tail(err);
            if (p.exitValue() != 0) {
                if (stderr.contains("No module named 'torch'")) {
                    throw new IllegalStateException("PyTorch is not installed for " + python + " (" + lastLine(stderr) + "); --peer torch "
                            + "needs it (Debian: python3-torch); name another Python with --python or KINDLING_PYTHON");
                }
                throw new IllegalStateException("peer " + script + " failed with exit code " + p.exitValue() + ": " + lastLine(stderr));
            }
            cmd.getErr().print(stderr);
            cmd.getErr().flush();
            String line = lastLine(tail(out));
            try {
                return new ObjectMapper().readValue(line, new TypeReference<LinkedHashMap<String, Object>>() {
                });
            } catch (IOException e) {
                throw new IllegalStateException("peer " + script + " printed no JSON result: \"" + line + "\"");
            }
        } finally {
            Files.deleteIfExists(out);
            Files.deleteIfExists(err);
        }
    }

    /** A number field of a peer's row, checked. */
    static double number(Map<String, Object> row, String field) {
        if (!(row.get(field) instanceof Number v)) {
            throw new IllegalStateException("the peer's result has no number \"" + field + "\": " + row);
        }
        return v.doubleValue();
    }

    /** The last {@link #MAX_OUTPUT_BYTES} of a file as UTF-8 (invalid bytes replaced). */
    private static String tail(Path file) throws IOException {
        try (RandomAccessFile f = new RandomAccessFile(file.toFile(), "r")) {
            long start = Math.max(0, f.length() - MAX_OUTPUT_BYTES);
            byte[] bytes = new byte[(int) (f.length() - start)];
            f.seek(start);
            f.readFully(bytes);
            return new String(bytes, StandardCharsets.UTF_8);
        }
    }

    private static String lastLine(String text) {
        String[] lines = text.strip().split("\n");
        return lines[lines.length - 1].strip();
    }
}
