package org.kindling.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.kindling.collective.LogCapture;
import org.kindling.models.config.RunConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.pipeline.PipelineExecutor;
import org.kindling.models.pipeline.PipelinePolicy;
import org.kindling.models.train.StepResult;

/**
 * Two replicas of a two-stage pipeline on four barrier tasks, in AxoNN's message-driven order: each
 * stage's replicas sum their gradients in a ring of their own, the run takes the steps data
 * parallelism over two workers takes (up to the order of float sums), and a stage lost mid-run
 * resumes bit for bit.
 */
class PipelineReplicasTrainTest {
    static SparkSession spark;
    @TempDir
    static Path dir;
    static Path data;

    @BeforeAll
    static void start() throws IOException {
        spark = DistributedTrainTest.session("local[4]", "pipeline-replicas-test");
        data = dir.resolve("data");
        DistributedTrainTest.writeDataset(data, 16);
    }

    @AfterAll
    static void stop() {
        spark.stop();
    }

    @Test
    void twoReplicasOfTwoStagesTrainAsTwoDataParallelWorkersAndResumeAfterALostStage() throws IOException {
        RunConfig cfg = new RunConfig(DistributedTrainTest.MODEL, new TrainConfig(7, 3e-3, 3e-4, 2, 6, 0.1, 0.9, 0.95, 1e-8, 1.0,
                2, DistributedTrainTest.DOCS_PER_BATCH * DistributedTrainTest.LEN, 1, 2, 5));
        Path dp = dir.resolve("dp");
        Path piped = dir.resolve("piped");
        Path faulty = dir.resolve("faulty");
        // Two workers of one single-thread replica each, as each pipeline stage trains.
        List<StepResult> a = TrainJob.run(spark, dp.toString(), data.toString(), cfg, 2, new TaskDevice("cpu:1", false));
        TrainJob.Pipeline stages = new TrainJob.Pipeline(2, PipelinePolicy.SHIFTED, PipelineExecutor.Order.MESSAGE_DRIVEN);
        List<StepResult> b;
        try (LogCapture logs = new LogCapture()) {
            b = TrainJob.run(spark, piped.toString(), data.toString(), null, cfg, 4, stages, new TaskDevice("cpu:1", false),
                    TrainJob.Fault.NONE, line -> { });
            assertTrue(logs.lines().stream().anyMatch(l -> l.contains("rank 3: pipeline stage 1 of 2 (blocks [0, 1, 2]), replica 1 of 2, shifted schedule, message-driven order")),
                    logs.lines().toString());
            assertTrue(logs.lines().stream().anyMatch(l -> l.contains("ring kindling-ring/stage 1 listening on")), logs.lines().toString());
        }
        assertEquals(6, b.size());
        for (int i = 0; i < 6; i++) {
            // The same tokens and the same mean; the replicas' sums come before the tied weight's, so only float order differs.
            assertEquals(a.get(i).loss(), b.get(i).loss(), 1e-5, "loss at step " + (i + 1));
            assertEquals(a.get(i).tokens(), b.get(i).tokens(), "tokens at step " + (i + 1));
        }
        assertTrue(Files.readString(piped.resolve("checkpoints/step-6/state.json")).contains("\"data_positions\" : [ "),
                "one data position per replica");
        try (LogCapture logs = new LogCapture()) {
            TrainJob.run(spark, faulty.toString(), data.toString(), null, cfg, 4, stages, new TaskDevice("cpu:1", false),
                    new TrainJob.Fault(2, 3, false), line -> { });
            assertTrue(logs.lines().stream().anyMatch(l -> l.contains("resumes from checkpoint step-2")), logs.lines().toString());
        }
        assertArrayEquals(DistributedTrainTest.weights(piped, 6), DistributedTrainTest.weights(faulty, 6),
                "a retried pipeline with replicas must end bit-identical");
    }
}
