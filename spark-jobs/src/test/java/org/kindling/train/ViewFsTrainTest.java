package org.kindling.train;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Collectors;
import java.util.stream.IntStream;
import org.apache.hadoop.conf.Configuration;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.kindling.data.PrepareJob;
import org.kindling.data.PrepareOptions;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.RunConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.train.StepResult;

/**
 * Tasks use the driver's Hadoop configuration: a corpus, dataset and run directory reachable only
 * through a viewfs mount table given as spark.hadoop.* settings are prepared, trained on by 2
 * workers and resumed.
 */
class ViewFsTrainTest {
    static final ModelConfig MODEL = ModelConfig.gpt(300, 32, 1, 2, 2, 64, 4, 0, 0.02, 1e-5);

    @TempDir
    Path dir;

    static RunConfig config(int maxSteps) {
        return new RunConfig(MODEL, new TrainConfig(3, 3e-3, 3e-4, 2, maxSteps, 0.1, 0.9, 0.95, 1e-8, 1.0, 1, 256, 2, 2, 2));
    }

    @Test
    void preparesTrainsWithTwoWorkersAndResumesThroughAViewFsMountTableFromTheSparkConf() throws IOException {
        Path corpus = Files.createDirectories(dir.resolve("corpus"));
        Files.writeString(corpus.resolve("a.txt"), IntStream.range(0, 300)
                .mapToObj(i -> "line " + i + ": the cat sat on the mat. the dog sat on the log.").collect(Collectors.joining("\n")));
        String table = "spark.hadoop.fs.viewfs.mounttable.kindling-test.link.";
        SparkSession spark = SparkSession.builder().master("local[2]").appName("viewfs-train-test")
                .config("spark.ui.enabled", "false")
                .config("spark.scheduler.barrier.maxConcurrentTasksCheck.interval", "1s")
                .config("spark.scheduler.barrier.maxConcurrentTasksCheck.maxFailures", "3")
                .config(TrainJob.RENDEZVOUS_TIMEOUT, "60")
                .config(TrainJob.COLLECTIVE_TIMEOUT, "60")
                .config(table + "/corpus", corpus.toUri().toString())
                .config(table + "/data", Files.createDirectories(dir.resolve("data")).toUri().toString())
                .config(table + "/runs", Files.createDirectories(dir.resolve("runs")).toUri().toString())
                // Driver and tasks share this JVM's FileSystem cache, which would hand a task that built its own
                // configuration the driver's viewfs instance and hide the bug this test is about.
                .config("spark.hadoop.fs.viewfs.impl.disable.cache", "true")
                .getOrCreate();
        String root = "viewfs://kindling-test";
        try {
            assertThrows(IOException.class, () -> new org.apache.hadoop.fs.Path(root + "/runs").getFileSystem(new Configuration()),
                    "viewfs://kindling-test is reachable only through the session's settings");
            PrepareJob.Result prepared = PrepareJob.run(spark, new PrepareOptions(List.of(root + "/corpus"), root + "/data/lines", null,
                    true, "text", null, 300, 64, null, false, 1 << 20, false));
            assertEquals(300, prepared.documents());
            assertTrue(Files.exists(dir.resolve("data/lines/manifest.json")));

            String run = root + "/runs/r1";
            List<StepResult> first = TrainJob.run(spark, run, root + "/data/lines", config(4), 2);
            assertEquals(List.of(1, 2, 3, 4), first.stream().map(StepResult::step).toList());
            List<StepResult> resumed = TrainJob.run(spark, run, root + "/data/lines", config(6), 2);
            assertEquals(List.of(5, 6), resumed.stream().map(StepResult::step).toList(), "the second run resumes from step-4");
            assertEquals("step-6", Files.readString(dir.resolve("runs/r1/checkpoints/LATEST")).trim());
            List<String> metrics = Files.readAllLines(dir.resolve("runs/r1/metrics.jsonl"));
            assertEquals(IntStream.rangeClosed(1, 6).mapToObj(s -> "{\"step\":" + s + ",").toList(),
                    metrics.stream().map(l -> l.substring(0, l.indexOf(',') + 1)).toList());
        } finally {
            spark.stop();
        }
    }
}
