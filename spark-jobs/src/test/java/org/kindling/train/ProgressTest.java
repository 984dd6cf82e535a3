package org.kindling.train;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.BasicFileAttributes;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.stream.IntStream;
import org.apache.hadoop.conf.Configuration;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.train.StepResult;

/**
 * metrics.jsonl and the progress line: layer metrics as extra fields; the file appended between log
 * intervals, rewritten only when a retry rewinds, and never fatal when unwritable.
 */
class ProgressTest {
    static final TrainConfig CFG = new TrainConfig(1, 1e-3, 1e-4, 0, 100, 0.1, 0.9, 0.95, 1e-8, 1.0, 1, 64, 2, 0, 1);

    @TempDir
    Path dir;

    /** A step result whose loss tells which attempt sent it. */
    private static StepResult step(int step, int attempt) {
        return new StepResult(step, attempt + step / 1000.0, 1e-3, 1.0, 64, 0.01);
    }

    private Object fileKey() throws IOException {
        return Files.readAttributes(dir.resolve(Progress.METRICS), BasicFileAttributes.class).fileKey();
    }

    private List<String> lines() throws IOException {
        return Files.readAllLines(dir.resolve(Progress.METRICS));
    }

    @Test
    void appendsBetweenIntervalsAndRewritesOnlyWhenARetryRewinds() throws IOException {
        Files.writeString(dir.resolve(Progress.METRICS), Progress.metricsLine(step(1, 0)) + "\n" + Progress.metricsLine(step(2, 0))
                + "\n" + Progress.metricsLine(step(3, 0)) + "\n");
        Progress p = new Progress(new HadoopRunStorage(dir.toString(), new Configuration()), CFG);
        // A resumed run from step 2: the earlier run's step 3 is replaced.
        p.accept(step(3, 1));
        p.accept(step(4, 1));
        assertEquals(List.of(Progress.metricsLine(step(1, 0)), Progress.metricsLine(step(2, 0)), Progress.metricsLine(step(3, 1)),
                Progress.metricsLine(step(4, 1))), lines());
        Object first = fileKey();
        for (int s = 5; s <= 8; s++) {
            p.accept(step(s, 1));
        }
        assertEquals(first, fileKey(), "later intervals append to the same file");
        assertEquals(8, lines().size());
        assertEquals(Progress.metricsLine(step(8, 1)), lines().get(7));
        // A retried attempt resumes from step 6: steps 7 and 8 were written and are replaced, once each.
        p.accept(step(7, 2));
        p.accept(step(8, 2));
        p.accept(step(9, 2));
        p.accept(step(10, 2));
        List<String> expected = IntStream.rangeClosed(1, 10).mapToObj(s -> Progress.metricsLine(step(s, s <= 2 ? 0 : s <= 6 ? 1 : 2)))
                .toList();
        assertEquals(expected, lines());
        Object rewritten = fileKey();
        assertNotEquals(first, rewritten, "a rewind rewrites the file whole");
        p.accept(step(11, 2));
        p.accept(step(12, 2));
        assertEquals(rewritten, fileKey());
        assertEquals(12, lines().size());
    }

    @Test
    void anUnwritableMetricsFileIsLoggedAndWrittenOnceItCanBe() throws IOException {
        Progress p = new Progress(new HadoopRunStorage(dir.toString(), new Configuration()), CFG);
        // A directory in the file's place (and one file inside, so that nothing can replace it) fails every write.
        Files.createDirectories(dir.resolve(Progress.METRICS));
        Files.writeString(dir.resolve(Progress.METRICS).resolve("blocker"), "x");
        for (int s = 1; s <= 4; s++) {
            p.accept(step(s, 0));
        }
        p.flush();
        assertEquals(true, Files.isDirectory(dir.resolve(Progress.METRICS)));
        Files.delete(dir.resolve(Progress.METRICS).resolve("blocker"));
        Files.delete(dir.resolve(Progress.METRICS));
        p.accept(step(5, 0));
        p.accept(step(6, 0));
        assertEquals(IntStream.rangeClosed(1, 6).mapToObj(s -> Progress.metricsLine(step(s, 0))).toList(), lines());
    }

    @Test
    void layerMetricsFollowTheFixedFieldsInNameOrderAndSurviveAResume() throws IOException {
        StepResult moe = new StepResult(2, 2.5, 1e-3, 0.75, 64, 0.01, new TreeMap<>(Map.of("z_loss", 1.234567e-7,
                "moe_balance_loss", 0.0123456789, "dropped_fraction", Double.NaN, "expert_imbalance", Double.NEGATIVE_INFINITY)));
        String line = "{\"step\":2,\"loss\":2.500000,\"lr\":1.000000e-03,\"grad_norm\":0.750000,\"tokens_per_s\":6400.0,"
                + "\"dropped_fraction\":null,\"expert_imbalance\":null,\"moe_balance_loss\":0.0123457,\"z_loss\":1.23457e-07}";
        assertEquals(line, Progress.metricsLine(moe));
        JsonNode parsed = new ObjectMapper().readTree(line);
        assertEquals(List.of("step", "loss", "lr", "grad_norm", "tokens_per_s", "dropped_fraction", "expert_imbalance",
                "moe_balance_loss", "z_loss"), iterable(parsed.fieldNames()));
        assertEquals(1.23457e-7, parsed.get("z_loss").asDouble(), 0);
        assertEquals("{\"step\":1,\"loss\":0.001000,\"lr\":1.000000e-03,\"grad_norm\":1.000000,\"tokens_per_s\":6400.0}",
                Progress.metricsLine(step(1, 0)), "a step without metrics has only the fixed fields");
        Path fresh = Files.createDirectories(dir.resolve("fresh"));
        Progress first = new Progress(new HadoopRunStorage(fresh.toString(), new Configuration()), CFG);
        first.accept(moe);
        assertEquals("step 2/100 | loss 2.5000 | lr 1.000e-03 | grad-norm 0.7500 | 6,400 tokens/s | ETA 0m01s"
                + " | dropped_fraction NaN | expert_imbalance -Infinity | moe_balance_loss 0.01235 | z_loss 1.235e-07", first.line(moe));
        assertEquals(List.of(line), Files.readAllLines(fresh.resolve(Progress.METRICS)));

        Files.writeString(dir.resolve(Progress.METRICS), Progress.metricsLine(step(1, 0)) + "\n" + line + "\n"
                + Progress.metricsLine(step(3, 0)) + "\n");
        Progress p = new Progress(new HadoopRunStorage(dir.toString(), new Configuration()), CFG);
        // Resumed from step 2: the earlier run's step 2, metrics and all, is kept as it was; step 3 is replaced.
        p.accept(step(3, 1));
        p.accept(step(4, 1));
        assertEquals(List.of(Progress.metricsLine(step(1, 0)), line, Progress.metricsLine(step(3, 1)), Progress.metricsLine(step(4, 1))),
                lines());
    }

    private static List<String> iterable(Iterator<String> names) {
        List<String> out = new ArrayList<>();
        names.forEachRemaining(out::add);
        return out;
    }
}
