package org.kindling.models.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.kindling.models.Gpt;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.ops.Device;
import org.kindling.ops.KernelClass;
import org.kindling.ops.Profiler;
import org.kindling.ops.cpu.CpuDevice;

/** Profiling counts a training step's kernels and sync by class and changes no bit of training. */
class ProfiledTrainingTest {
    static final ModelConfig MODEL = DataParallelTest.MODEL;
    static final TrainConfig TRAIN = DataParallelTest.TRAIN;
    static final int STEPS = 3;

    /** Losses and final weights of {@code world} replicas on slices, profiled by {@code profiler} when not null. */
    private static double[] train(int world, Profiler profiler, float[][] weights) {
        double[] losses = new double[STEPS];
        try (DataParallel dp = new DataParallel(world, profiler, (rank, sync) -> {
            Device cpu = CpuDevice.open(1);
            Device dev = profiler == null ? cpu : profiler.wrap(cpu);
            Gpt m = new Gpt(MODEL, dev, 5);
            return new DataParallel.Replica(dev, m, new Trainer(m, TRAIN, sync));
        })) {
            List<org.kindling.models.data.DataSource> data = new java.util.ArrayList<>();
            for (int r = 0; r < world; r++) {
                data.add(DataParallelTest.slice(r, world));
            }
            for (int s = 0; s < STEPS; s++) {
                losses[s] = dp.step(data).loss();
            }
            weights[0] = dp.replicas().get(0).model().params().values().toFloatArray();
        }
        return losses;
    }

    @Test
    void profilingChangesNoLossOrWeight() {
        for (int world : new int[] {1, 2}) {
            float[][] plain = new float[1][];
            float[][] profiled = new float[1][];
            Profiler profiler = new Profiler();
            assertArrayEquals(train(world, null, plain), train(world, profiler, profiled), 0.0, "losses, " + world + " replica(s)");
            assertArrayEquals(plain[0], profiled[0], 0f, "weights, " + world + " replica(s)");
        }
    }

    @Test
    void countsEveryClassATrainingStepRuns() {
        Profiler profiler = new Profiler();
        train(2, profiler, new float[1][]);
        Map<KernelClass, Profiler.Totals> t = profiler.totals();
        for (KernelClass k : List.of(KernelClass.GEMM, KernelClass.ATTENTION, KernelClass.NORMALIZATION, KernelClass.ELEMENTWISE,
                KernelClass.LOSS, KernelClass.OPTIMIZER, KernelClass.EMBEDDING, KernelClass.COMMUNICATION)) {
            assertTrue(t.get(k).calls() > 0, k + " counted no call: " + t);
            assertTrue(t.get(k).nanos() > 0, k + " counted no time");
        }
        // One cross-entropy per replica and step, one AdamW per parameter group.
        assertEquals(2 * STEPS, t.get(KernelClass.LOSS).calls());
        // The GEMMs dominate a transformer's FLOPs.
        double all = t.values().stream().mapToDouble(Profiler.Totals::flops).sum();
        assertTrue(t.get(KernelClass.GEMM).flops() > 0.5 * all, "gemm FLOPs " + t.get(KernelClass.GEMM).flops() + " of " + all);
    }
}
