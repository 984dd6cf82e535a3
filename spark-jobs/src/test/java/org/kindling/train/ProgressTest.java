package org.kindling.train;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.BasicFileAttributes;
import java.util.List;
import java.util.stream.IntStream;
import org.apache.hadoop.conf.Configuration;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.train.StepResult;

/** metrics.jsonl: appended between log intervals, rewritten only when a retry rewinds, and never fatal when unwritable. */
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
}
