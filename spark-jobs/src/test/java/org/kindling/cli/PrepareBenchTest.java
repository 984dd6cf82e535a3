package org.kindling.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class PrepareBenchTest {
    /**
     * The synthetic corpus is made once and reused, prepare and the single-thread encode are both
     * timed, and the share is prepare's rate over threads × the encode rate; the prepared dataset is
     * deleted after the run.
     */
    @Test
    void preparesTheCorpusAndReportsItsRateAsAShareOfTheEncodeCeiling(@TempDir Path work) throws Exception {
        String[] args = {"bench", "prepare", "--mb", "1", "--sample-mb", "1", "--vocab", "300", "--threads", "1", "--work",
            work.toString(), "--json"};
        CliRun r = CliRun.of(args);
        assertEquals(0, r.code(), r.err());
        String line = r.out().strip();
        assertEquals(List.of("bench", "mb", "threads", "mb_per_s", "encode_mb_per_s", "share"), CliTest.fieldNames(line));
        JsonNode row = r.rows(null).get(0);
        assertTrue(row.get("mb").asDouble() >= 1.0 && row.get("mb").asDouble() < 1.1, line);
        double expected = row.get("mb_per_s").asDouble() / row.get("encode_mb_per_s").asDouble();
        assertEquals(expected, row.get("share").asDouble(), 0.02 * expected, line);
        assertTrue(r.err().contains("cold single-thread encode"), r.err());
        Path corpus = work.resolve("synthetic-1000000b-seed42.txt");
        long made = Files.getLastModifiedTime(corpus).toMillis();
        try (Stream<Path> files = Files.list(work)) {
            assertEquals(List.of("synthetic-1000000b-seed42.txt", "tokenizer.json"),
                    files.map(p -> p.getFileName().toString()).sorted().toList(), "the prepared dataset is deleted");
        }
        String first = Files.readString(corpus).lines().findFirst().orElseThrow();
        assertTrue(first.length() > 20 && first.endsWith("."), first);
        assertEquals(0, CliRun.of(args).code());
        assertEquals(made, Files.getLastModifiedTime(corpus).toMillis(), "the corpus is reused, not written again");
    }

    @Test
    void badOptionsAreUsageErrors(@TempDir Path work) {
        CliRun.assertUsageError("--mb must be at least 1, got 0", "bench", "prepare", "--mb", "0");
        CliRun.assertUsageError("--input " + work.resolve("none") + " is not a file", "bench", "prepare", "--input",
                work.resolve("none").toString());
        CliRun.assertUsageError("bench prepare runs on the CPU only", "bench", "prepare", "--device", "reference");
        CliRun.assertUsageError("--mb sizes the synthetic corpus; it does not apply with --input", "bench", "prepare", "--input",
                work.toString(), "--mb", "5");
        CliRun.assertUsageError("--vocab sizes the trained tokenizer; it does not apply with --tokenizer", "bench", "prepare",
                "--tokenizer", work.resolve("t.json").toString(), "--vocab", "500");
    }
}
