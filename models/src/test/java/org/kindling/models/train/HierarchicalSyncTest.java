package org.kindling.models.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.junit.jupiter.api.Test;
import org.kindling.models.Gpt;
import org.kindling.models.data.DataSource;
import org.kindling.models.nn.Init;
import org.kindling.models.nn.ParamGroup;
import org.kindling.models.nn.Params;
import org.kindling.ops.Device;
import org.kindling.ops.Fence;
import org.kindling.ops.cpu.CpuDevice;

/**
 * Groups of replicas summing in shared memory and exchanging through a sync between the groups
 * (here a second shared-memory group standing in for the ring between Spark tasks) give every
 * replica the same bits, equal to the flat sum up to the order of fp32 additions.
 */
class HierarchicalSyncTest {
    static final int GROUPS = 2;
    static final int LOCAL = 2;

    /** Replica syncs by global rank: GROUPS groups of LOCAL, composed over a shared-memory "ring" of the groups. */
    private static List<GradientSync> syncs() {
        List<SharedMemorySync> between = SharedMemorySync.group(GROUPS, 60);
        List<GradientSync> all = new ArrayList<>();
        for (int g = 0; g < GROUPS; g++) {
            all.addAll(HierarchicalSync.compose(SharedMemorySync.group(LOCAL, 60), between.get(g)));
        }
        return all;
    }

    private interface Work {
        String run(GradientSync sync) throws Exception;
    }

    /** Runs {@code work} on every sync at once; returns each one's answer by global rank. */
    private static List<String> onAll(List<GradientSync> syncs, Work work) throws Exception {
        ExecutorService pool = Executors.newFixedThreadPool(syncs.size());
        try {
            List<Future<String>> out = new ArrayList<>();
            for (GradientSync s : syncs) {
                out.add(pool.submit(() -> work.run(s)));
            }
            List<String> answers = new ArrayList<>();
            for (Future<String> f : out) {
                answers.add(f.get());
            }
            return answers;
        } finally {
            pool.shutdownNow();
        }
    }

    /** ZeRO-1's all-gather of weights: each replica's range (one of them empty) reaches every replica of every group. */
    @Test
    void allGatherOfRangesReachesEveryReplicaOfEveryGroup() throws Exception {
        int[] bounds = {0, 3, 3, 7, 10};
        float[] expected = new float[10];
        for (int r = 0; r < 4; r++) {
            for (int i = bounds[r]; i < bounds[r + 1]; i++) {
                expected[i] = 100 * r + i;
            }
        }
        List<GradientSync> syncs = syncs();
        for (int round = 0; round < 2; round++) { // the second reuses the groups' slots
            List<String> answers = onAll(syncs, sync -> {
                float[] v = new float[10];
                Arrays.fill(v, -1);
                for (int i = bounds[sync.rank()]; i < bounds[sync.rank() + 1]; i++) {
                    v[i] = 100 * sync.rank() + i;
                }
                sync.allGather(v, bounds);
                return Arrays.toString(v);
            });
            for (String a : answers) {
                assertEquals(Arrays.toString(expected), a);
            }
        }
    }

    @Test
    void ranksNumberReplicasGroupByGroupAndCollectivesAgree() throws Exception {
        List<GradientSync> syncs = syncs();
        for (int r = 0; r < syncs.size(); r++) {
            assertEquals(r, syncs.get(r).rank());
            assertEquals(GROUPS * LOCAL, syncs.get(r).world());
        }
        List<String> answers = onAll(syncs, sync -> {
            long[] gathered = sync.allGather(100L + sync.rank());
            double[] v = {sync.rank(), 0.1, 1e-17 * (sync.rank() + 1)};
            sync.allReduceSum(v);
            long[] again = sync.allGather(-sync.rank());
            return Arrays.toString(gathered) + " " + Arrays.toString(v) + " " + Arrays.toString(again);
        });
        for (String a : answers) {
            assertEquals(answers.get(0), a, "every replica gets the same bits");
        }
        assertTrue(answers.get(0).startsWith("[100, 101, 102, 103] [6.0, 0.4"), answers.get(0));
        assertTrue(answers.get(0).endsWith("[0, -1, -2, -3]"), answers.get(0));
    }

    /** Gradients of awkward magnitudes: the composed sum is the same bits everywhere and the flat sum up to fp32 order. */
    @Test
    void gradientSumsAreIdenticalEverywhereAndEqualTheFlatSum() throws Exception {
        int n = 1000;
        float[][] grads = new float[GROUPS * LOCAL][n];
        java.util.SplittableRandom r = new java.util.SplittableRandom(7);
        for (float[] g : grads) {
            for (int i = 0; i < n; i++) {
                g[i] = (float) ((r.nextDouble() - 0.5) * Math.pow(10, r.nextInt(8) - 4));
            }
        }
        List<String> answers = onAll(syncs(), sync -> {
            Params.Builder b = new Params.Builder();
            b.add("w", Init.zeros(), ParamGroup.DECAY, 10, 60);
            b.add("b", Init.zeros(), ParamGroup.NO_DECAY, 400);
            try (Device dev = CpuDevice.open(1); Params params = b.build(dev, 1)) {
                params.grads().copyFrom(grads[sync.rank()]);
                sync.gradientsReady(params.list(), Fence.DONE);
                sync.finishGradients(params);
                return Arrays.toString(params.grads().toFloatArray());
            }
        });
        for (String a : answers) {
            assertEquals(answers.get(0), a, "every replica gets the same bits");
        }
        float[] got = parse(answers.get(0));
        boolean differsInOrder = false;
        for (int i = 0; i < n; i++) {
            double flat = 0;
            float flatF = 0;
            for (float[] g : grads) {
                flat += g[i];
                flatF += g[i];
            }
            assertEquals(flat, got[i], 1e-6 * (Math.abs(grads[0][i]) + Math.abs(grads[1][i]) + Math.abs(grads[2][i])
                    + Math.abs(grads[3][i])), "element " + i);
            differsInOrder |= flatF != got[i];
        }
        // (g0 + g1) + (g2 + g3) rounds differently from ((g0 + g1) + g2) + g3 somewhere: the test sees the composition.
        assertTrue(differsInOrder, "the composed sum should differ from the sequential flat sum in some rounding");
    }

    private static float[] parse(String s) {
        String[] parts = s.substring(1, s.length() - 1).split(", ");
        float[] out = new float[parts.length];
        for (int i = 0; i < parts.length; i++) {
            out[i] = Float.parseFloat(parts[i]);
        }
        return out;
    }

    /** Two groups of two replicas train as four replicas in one group do, up to fp32 order, and stay identical. */
    @Test
    void groupsOfReplicasTrainLikeOneFlatGroup() throws Exception {
        int world = GROUPS * LOCAL;
        float[] flat;
        try (DataParallel dp = DataParallelTest.replicas(DataParallelTest.MOE, DataParallelTest.TRAIN, world)) {
            List<DataSource> data = new ArrayList<>();
            for (int r = 0; r < world; r++) {
                data.add(DataParallelTest.slice(r, world));
            }
            for (int s = 0; s < DataParallelTest.STEPS; s++) {
                dp.step(data);
            }
            flat = dp.replicas().get(0).model().params().values().toFloatArray();
        }
        float[] w0 = trainInGroups(DataParallelTest.MOE, DataParallelTest.TRAIN);
        double maxDiff = 0;
        for (int i = 0; i < w0.length; i++) {
            maxDiff = Math.max(maxDiff, Math.abs(w0[i] - flat[i]));
        }
        assertTrue(maxDiff < 1e-4, "max weight difference from the flat group " + maxDiff);
        assertNotEquals(0, w0.length);
    }

    /** zero 1 in groups: replicas scatter from shared memory, the groups all-gather the weights; the plain run's bits. */
    @Test
    void groupsWithZeroOneTrainBitIdenticallyToPlainGroups() throws Exception {
        assertArrayEquals(trainInGroups(DataParallelTest.MODEL, ZeroTest.TRAIN),
                trainInGroups(DataParallelTest.MODEL, ZeroTest.TRAIN.withZero(1)));
    }

    /** Trains GROUPS groups of LOCAL replicas; returns the weights, after checking every replica holds the same. */
    private static float[] trainInGroups(org.kindling.models.config.ModelConfig model,
                                         org.kindling.models.config.TrainConfig train) throws Exception {
        int world = GROUPS * LOCAL;
        List<SharedMemorySync> between = SharedMemorySync.group(GROUPS, 60);
        List<DataParallel> groups = new ArrayList<>();
        ExecutorService pool = Executors.newFixedThreadPool(GROUPS);
        try {
            for (int g = 0; g < GROUPS; g++) {
                groups.add(new DataParallel(LOCAL, between.get(g), 60, null, (rank, sync) -> {
                    Device dev = CpuDevice.open(1);
                    Gpt m = new Gpt(model, dev, 5);
                    return new DataParallel.Replica(dev, m, new Trainer(m, train, sync));
                }));
            }
            List<Future<?>> runs = new ArrayList<>();
            for (int g = 0; g < GROUPS; g++) {
                DataParallel dp = groups.get(g);
                List<DataSource> data = new ArrayList<>();
                for (int l = 0; l < LOCAL; l++) {
                    data.add(DataParallelTest.slice(g * LOCAL + l, world));
                }
                runs.add(pool.submit(() -> {
                    for (int s = 0; s < DataParallelTest.STEPS; s++) {
                        StepResult r = dp.step(data);
                        assertEquals((long) DataParallelTest.B * 32, r.tokens(), "tokens of every replica of every group");
                    }
                    return null;
                }));
            }
            for (Future<?> f : runs) {
                f.get();
            }
            float[] w0 = groups.get(0).replicas().get(0).model().params().values().toFloatArray();
            for (DataParallel dp : groups) {
                for (DataParallel.Replica rep : dp.replicas()) {
                    assertArrayEquals(w0, rep.model().params().values().toFloatArray(), "every replica of every group");
                }
            }
            return w0;
        } finally {
            pool.shutdownNow();
            groups.forEach(DataParallel::close);
        }
    }
}
