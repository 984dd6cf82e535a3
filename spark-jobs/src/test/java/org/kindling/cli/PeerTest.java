package org.kindling.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** --peer torch: optional, a clear error without Python or PyTorch, the peer's row beside Kindling's when present. */
class PeerTest {
    private static final String[] TINY_TRAIN = {"bench", "train", "--layers", "1", "--d-model", "32", "--heads", "2", "--vocab", "50",
        "--seq", "16", "--batch", "2", "--steps", "2", "--warmup", "1", "--peer", "torch"};

    private static String[] with(String[] base, String... more) {
        List<String> all = new ArrayList<>(List.of(base));
        all.addAll(List.of(more));
        return all.toArray(String[]::new);
    }

    @Test
    void onlyTorchIsAPeer() {
        CliRun r = CliRun.of("bench", "gemm", "--m", "8", "--n", "8", "--k", "8", "--peer", "jax");
        assertEquals(2, r.code());
        assertTrue(r.err().contains("--peer must be torch, got \"jax\""), r.err());
    }

    @Test
    void aMissingPythonIsNamedWithTheWayToChooseAnother(@TempDir Path dir) {
        String python = dir.resolve("no-such-python").toString();
        CliRun r = CliRun.of(with(TINY_TRAIN, "--python", python));
        assertEquals(1, r.code(), r.err());
        assertTrue(r.err().contains("cannot run the peer's Python \"" + python + "\"") && r.err().contains("--python"), r.err());
    }

    @Test
    void aPythonWithoutTorchIsSaidSo(@TempDir Path dir) throws Exception {
        Path python = dir.resolve("python-without-torch");
        Files.writeString(python, "#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n");
        Files.setPosixFilePermissions(python, PosixFilePermissions.fromString("rwx------"));
        CliRun r = CliRun.of(with(TINY_TRAIN, "--python", python.toString()));
        assertEquals(1, r.code(), r.err());
        assertTrue(r.err().contains("PyTorch is not installed for " + python), r.err());
    }

    /** A Python that imports torch, or null: the peer is optional, so these tests skip without it. */
    private static String torchPython() throws Exception {
        for (String candidate : new String[] {System.getenv("KINDLING_PYTHON"), "python3", "/usr/bin/python3"}) {
            if (candidate == null) {
                continue;
            }
            try {
                Process p = new ProcessBuilder(candidate, "-c", "import torch").redirectErrorStream(true).start();
                if (p.waitFor(60, TimeUnit.SECONDS) && p.exitValue() == 0) {
                    return candidate;
                }
                p.destroyForcibly();
            } catch (java.io.IOException e) {
                // not installed: try the next
            }
        }
        return null;
    }

    @Test
    void thePeerPrintsTheSameFieldsInTheSameRun() throws Exception {
        String python = torchPython();
        Assumptions.assumeTrue(python != null, "no Python with PyTorch here (python3-torch); the peer is optional");
        CliRun r = CliRun.of(with(TINY_TRAIN, "--python", python, "--json"));
        assertEquals(0, r.code(), r.err());
        // Each side's train line; the GEMM ceiling and utilization lines between and after are TrainBenchTest's.
        String[] lines = java.util.Arrays.stream(r.out().strip().split("\n")).filter(l -> l.startsWith("{\"bench\":\"train\","))
                .toArray(String[]::new);
        assertEquals(2, lines.length, r.out());
        assertTrue(r.out().contains("\"bench\":\"train_utilization\",\"impl\":\"torch "), r.out());
        JsonNode ours = new ObjectMapper().readTree(lines[0]);
        JsonNode theirs = new ObjectMapper().readTree(lines[1]);
        List<String> a = new ArrayList<>();
        ours.fieldNames().forEachRemaining(a::add);
        List<String> b = new ArrayList<>();
        theirs.fieldNames().forEachRemaining(b::add);
        assertEquals(a, b);
        assertEquals("kindling", ours.get("impl").asText());
        assertTrue(theirs.get("impl").asText().startsWith("torch "), lines[1]);
        assertEquals(ours.get("params").asInt(), theirs.get("params").asInt(), "the peer trains the same model");
        assertTrue(theirs.get("tokens_per_s").asDouble() > 0, lines[1]);
        assertTrue(r.err().contains("kindling / torch"), r.err());

        CliRun g = CliRun.of("bench", "gemm", "--m", "40", "--n", "30", "--k", "20", "--seconds", "0", "--peer", "torch", "--python",
                python, "--json");
        assertEquals(0, g.code(), g.err());
        String[] rows = g.out().strip().split("\n");
        assertEquals(2, rows.length, g.out());
        List<String> gemmOurs = new ArrayList<>();
        new ObjectMapper().readTree(rows[0]).fieldNames().forEachRemaining(gemmOurs::add);
        List<String> gemmTheirs = new ArrayList<>();
        new ObjectMapper().readTree(rows[1]).fieldNames().forEachRemaining(gemmTheirs::add);
        assertEquals(gemmOurs, gemmTheirs);
    }
}
