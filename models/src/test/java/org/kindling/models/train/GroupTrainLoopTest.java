package org.kindling.models.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import java.util.OptionalInt;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.kindling.models.Gpt;
import org.kindling.models.config.RunConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.io.Checkpoints;
import org.kindling.models.io.LocalRunStorage;
import org.kindling.ops.Device;
import org.kindling.ops.cpu.CpuDevice;

/**
 * A worker training as a group of replicas reads, checkpoints and resumes like one trainer: its
 * batches (some of one sequence, which leaves a replica nothing) are split across the replicas.
 */
class GroupTrainLoopTest {
    static final TrainConfig TRAIN = new TrainConfig(5, 3e-3, 3e-4, 2, 6, 0.1, 0.9, 0.95, 1e-8, 1.0, 1, 4096, 1, 3, 5);
    static final RunConfig RUN = new RunConfig(DataParallelTest.MOE, TRAIN);

    /** Every third batch is a single sequence; the others 8. */
    static DataSource data() {
        return DataSource.indexed(p -> {
            int from = (int) (8 * p);
            TokenBatch b = DataParallelTest.EXAMPLES.batch(from, from + (p % 3 == 2 ? 1 : 8));
            return b;
        });
    }

    static DataParallel group(int n) {
        return new DataParallel(n, GradientSync.SINGLE, 60, null, (rank, sync) -> {
            Device dev = CpuDevice.open(1);
            Gpt m = new Gpt(RUN.model(), dev, 5);
            return new DataParallel.Replica(dev, m, new Trainer(m, TRAIN, sync));
        });
    }

    @Test
    void aGroupTrainsLikeOneTrainerAndResumesBitIdentically(@TempDir Path dir) {
        List<StepResult> single = new ArrayList<>();
        float[] one;
        try (Device dev = CpuDevice.open(1); Gpt m = new Gpt(RUN.model(), dev, 5); Trainer t = new Trainer(m, TRAIN)) {
            TrainLoop.run(t, data(), new Checkpoints(new LocalRunStorage(dir.resolve("single"))), Optional.empty(), RUN, single::add);
            one = m.params().values().toFloatArray();
        }
        List<StepResult> steps = new ArrayList<>();
        float[] whole;
        Checkpoints checkpoints = new Checkpoints(new LocalRunStorage(dir.resolve("group")));
        try (DataParallel dp = group(2)) {
            DataSource d = data();
            assertEquals(TRAIN.maxSteps(), TrainLoop.run(dp, GradientSync.SINGLE, d, checkpoints, Optional.empty(), RUN, steps::add));
            whole = dp.replicas().get(1).model().params().values().toFloatArray();
            assertArrayEquals(dp.replicas().get(0).model().params().values().toFloatArray(), whole);
            assertEquals(TRAIN.maxSteps(), d.position(), "one batch per step, as one trainer reads");
        }
        for (int s = 0; s < single.size(); s++) {
            assertEquals(single.get(s).loss(), steps.get(s).loss(), 1e-5, "step " + (s + 1));
            assertEquals(single.get(s).tokens(), steps.get(s).tokens(), "step " + (s + 1));
        }
        double maxDiff = 0;
        for (int i = 0; i < one.length; i++) {
            maxDiff = Math.max(maxDiff, Math.abs(one[i] - whole[i]));
        }
        assertTrue(maxDiff < 1e-4, "max weight difference " + maxDiff);
        assertArrayEquals(new long[] {3}, checkpoints.state("step-3").dataPositions());
        assertEquals(OptionalInt.of(2), checkpoints.state("step-3").replicasPerWorker());
        assertEquals(OptionalInt.of(1), new Checkpoints(new LocalRunStorage(dir.resolve("single"))).state("step-3")
                .replicasPerWorker(), "the single-trainer loop is a group of one");
        try (DataParallel dp = group(2)) {
            TrainLoop.run(dp, GradientSync.SINGLE, data(), checkpoints, Optional.of("step-3"), RUN, r -> { });
            for (DataParallel.Replica rep : dp.replicas()) {
                assertArrayEquals(whole, rep.model().params().values().toFloatArray(), "resumed at step 3");
            }
        }
    }

    /** The replica count sets the batch splits, sum order and dropout masks: resuming with another is refused. */
    @Test
    void resumingWithAnotherReplicaCountIsRefusedUnlessTheCountIsUnrecorded(@TempDir Path dir) throws IOException {
        Checkpoints checkpoints = new Checkpoints(new LocalRunStorage(dir));
        float[] saved;
        try (DataParallel dp = group(2)) {
            TrainLoop.run(dp, GradientSync.SINGLE, data(), checkpoints, Optional.empty(), RUN, r -> { });
            saved = dp.replicas().get(0).model().params().values().toFloatArray();
        }
        String last = checkpoints.latest().orElseThrow();
        try (DataParallel dp = group(3)) {
            ReplicaCountException e = assertThrows(ReplicaCountException.class,
                    () -> TrainLoop.run(dp, GradientSync.SINGLE, data(), checkpoints, Optional.of(last), RUN, r -> { }));
            assertEquals(2, e.written());
            assertEquals(3, e.running());
            assertTrue(e.getMessage().contains(last) && e.getMessage().contains("2 replica(s)"), e.getMessage());
        }
        // A checkpoint from before the count was recorded: its count is unknown, so any resumes it.
        Path state = dir.resolve("checkpoints/" + last + "/state.json");
        ObjectNode json = (ObjectNode) new ObjectMapper().readTree(state.toFile());
        json.remove("replicas_per_worker");
        new ObjectMapper().writeValue(state.toFile(), json);
        assertEquals(OptionalInt.empty(), checkpoints.state(last).replicasPerWorker());
        try (DataParallel dp = group(3)) {
            assertEquals(TRAIN.maxSteps(), TrainLoop.run(dp, GradientSync.SINGLE, data(), checkpoints, Optional.of(last), RUN,
                    r -> { }));
            assertArrayEquals(saved, dp.replicas().get(2).model().params().values().toFloatArray());
        }
    }
}
