package org.kindling.models.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.kindling.models.Gpt;
import org.kindling.models.config.RunConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.io.Checkpoints;
import org.kindling.models.io.LocalRunStorage;
import org.kindling.models.nn.Param;
import org.kindling.models.nn.Params;
import org.kindling.ops.Device;
import org.kindling.ops.cpu.CpuDevice;

/** ZeRO-1 (zero: 1) equals plain data parallelism bit for bit, with 1/W of AdamW's moments per replica. */
class ZeroTest {
    /** Clipping on at a norm the early steps exceed, so the sharded norm decides the step. */
    static final TrainConfig TRAIN = new TrainConfig(5, 3e-3, 3e-4, 2, 6, 0.1, 0.9, 0.95, 1e-8, 0.5, 1, 4096, 1, 3, 5);

    static DataParallel replicas(TrainConfig train, int n) {
        return new DataParallel(n, GradientSync.SINGLE, 60, null, (rank, sync) -> {
            Device dev = CpuDevice.open(1);
            Gpt m = new Gpt(DataParallelTest.MODEL, dev, 5);
            return new DataParallel.Replica(dev, m, new Trainer(m, train, sync));
        });
    }

    @Test
    void shardsAreWholeParametersInLayoutOrderCoveringTheBuffer() {
        try (Device dev = CpuDevice.open(1); Gpt m = new Gpt(DataParallelTest.MODEL, dev, 5)) {
            Params params = m.params();
            for (int world : new int[] {1, 2, 3, 4, 7, 1000}) {
                int[] b = ZeroShards.bounds(params, world);
                assertEquals(world + 1, b.length);
                assertEquals(0, b[0]);
                assertEquals(params.count(), b[world]);
                for (int r = 0; r < world; r++) {
                    assertTrue(b[r] <= b[r + 1], world + " workers: " + java.util.Arrays.toString(b));
                }
                for (Param p : params.list()) {
                    int o = p.value().offset() - params.values().offset();
                    int owners = 0;
                    for (int r = 0; r < world; r++) {
                        if (ZeroShards.owns(params, p, b[r], b[r + 1])) {
                            owners++;
                            assertTrue(o + p.numel() <= b[r + 1], p.name() + " is split between shards");
                        }
                    }
                    assertEquals(1, owners, p.name() + " has one owner of " + world);
                }
            }
        }
    }

    @Test
    void zeroOneEqualsPlainDataParallelBitForBitWithAShareOfTheMoments() {
        for (boolean offload : new boolean[] {false, true}) {
            TrainConfig plain = TRAIN.withOffload(offload);
            for (int n : new int[] {2, 3, 4}) {
                String what = n + " replicas" + (offload ? ", moments offloaded" : "");
                try (DataParallel a = replicas(plain, n); DataParallel b = replicas(plain.withZero(1), n)) {
                    List<DataSource> data = new ArrayList<>();
                    for (int r = 0; r < n; r++) {
                        data.add(DataParallelTest.slice(r, n));
                    }
                    List<DataSource> same = new ArrayList<>();
                    for (int r = 0; r < n; r++) {
                        same.add(DataParallelTest.slice(r, n));
                    }
                    boolean clipped = false;
                    for (int s = 0; s < DataParallelTest.STEPS; s++) {
                        StepResult x = a.step(data);
                        StepResult y = b.step(same);
                        assertEquals(x.loss(), y.loss(), 0, what + ", step " + (s + 1));
                        assertEquals(x.gradNorm(), y.gradNorm(), 0, what + ", step " + (s + 1));
                        clipped |= x.gradNorm() > plain.gradClip();
                    }
                    assertTrue(clipped, "the comparison must cover a clipped step");
                    float[] w = a.replicas().get(0).model().params().values().toFloatArray();
                    long whole = a.replicas().get(0).trainer().optimizer().memoryBytes();
                    long sum = 0;
                    for (DataParallel.Replica rep : b.replicas()) {
                        assertArrayEquals(w, rep.model().params().values().toFloatArray(), what);
                        long own = rep.trainer().optimizer().memoryBytes();
                        sum += own;
                        if (!offload) {
                            // Shards hold whole parameters: a shard exceeds 1/W by at most the largest parameter's moments.
                            assertTrue(own <= whole / n + 8L * 4096, what + ": " + own + " of " + whole + " bytes");
                        }
                    }
                    if (!offload) {
                        assertEquals(whole, sum, what + ": the shards' moments add up to the whole");
                    }
                }
            }
        }
    }

    /**
     * A sharded run's checkpoints hold the same tensors, byte for byte, as a plain run's, and each
     * resumes the other: sharding is a choice of the run, not of its checkpoints.
     */
    @Test
    void checkpointsEqualPlainOnesAndResumeEitherWay(@TempDir Path dir) throws IOException {
        RunConfig plainRun = new RunConfig(DataParallelTest.MODEL, TRAIN);
        RunConfig zeroRun = new RunConfig(DataParallelTest.MODEL, TRAIN.withZero(1));
        Checkpoints plain = new Checkpoints(new LocalRunStorage(dir.resolve("plain")));
        Checkpoints zero = new Checkpoints(new LocalRunStorage(dir.resolve("zero")));
        float[] end;
        try (DataParallel dp = replicas(TRAIN, 2)) {
            TrainLoop.run(dp, GradientSync.SINGLE, GroupTrainLoopTest.data(), plain, Optional.empty(), plainRun, r -> { });
            end = dp.replicas().get(0).model().params().values().toFloatArray();
        }
        try (DataParallel dp = replicas(TRAIN.withZero(1), 2)) {
            TrainLoop.run(dp, GradientSync.SINGLE, GroupTrainLoopTest.data(), zero, Optional.empty(), zeroRun, r -> { });
            assertArrayEquals(end, dp.replicas().get(1).model().params().values().toFloatArray());
        }
        for (String step : new String[] {"step-3", "step-6"}) {
            for (String file : new String[] {"optimizer.safetensors", "model.safetensors"}) {
                assertArrayEquals(Files.readAllBytes(dir.resolve("plain/checkpoints/" + step + "/" + file)),
                        Files.readAllBytes(dir.resolve("zero/checkpoints/" + step + "/" + file)), step + "/" + file);
            }
        }
        // Each run resumes the other's step 3 and ends where both ended.
        try (DataParallel dp = replicas(TRAIN.withZero(1), 2)) {
            TrainLoop.run(dp, GradientSync.SINGLE, GroupTrainLoopTest.data(), plain, Optional.of("step-3"), zeroRun, r -> { });
            for (DataParallel.Replica rep : dp.replicas()) {
                assertArrayEquals(end, rep.model().params().values().toFloatArray(), "zero 1 resumed from a plain checkpoint");
            }
        }
        try (DataParallel dp = replicas(TRAIN, 2)) {
            TrainLoop.run(dp, GradientSync.SINGLE, GroupTrainLoopTest.data(), zero, Optional.of("step-3"), plainRun, r -> { });
            assertArrayEquals(end, dp.replicas().get(0).model().params().values().toFloatArray(), "plain resumed from zero 1's");
        }
    }

    /** Outside a gather, a shard's optimizer cannot hand out moments it does not hold. */
    @Test
    void anotherShardsMomentsAreNotReadWithoutAGather() {
        try (DataParallel dp = replicas(TRAIN.withZero(1), 2)) {
            Params params = dp.replicas().get(1).model().params();
            int[] b = ZeroShards.bounds(params, 2);
            Param other = params.list().stream().filter(p -> !ZeroShards.owns(params, p, b[1], b[2])).findFirst().orElseThrow();
            var state = dp.replicas().get(1).trainer().optimizer().state();
            String first = "m." + other.name();
            IllegalStateException e = assertThrows(IllegalStateException.class, () -> state.get(first).read());
            assertTrue(e.getMessage().contains("another worker's shard"), e.getMessage());
        }
    }
}
