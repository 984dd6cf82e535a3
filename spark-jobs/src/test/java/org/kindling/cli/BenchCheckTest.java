package org.kindling.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.kindling.ops.cpu.CpuPool;

/** The checks benches make of the work they time, and the bandwidths allreduce reports. */
class BenchCheckTest {
    @Test
    void plainGemmLoopComputesTheProductOnAnyThreadCount() {
        int m = 7;
        int n = 5;
        int k = 3;
        SplittableRandom r = new SplittableRandom(3);
        float[] a = new float[m * k];
        float[] b = new float[k * n];
        for (int i = 0; i < a.length; i++) {
            a[i] = (float) r.nextDouble();
        }
        for (int i = 0; i < b.length; i++) {
            b[i] = (float) r.nextDouble();
        }
        float[] want = new float[m * n];
        for (int i = 0; i < m; i++) {
            for (int j = 0; j < n; j++) {
                double s = 0;
                for (int p = 0; p < k; p++) {
                    s += (double) a[i * k + p] * b[p * n + j];
                }
                want[i * n + j] = (float) s;
            }
        }
        for (int threads : new int[] {1, 3}) {
            float[] c = new float[m * n];
            java.util.Arrays.fill(c, 99f); // the loop overwrites C, as the backend's GEMM does
            try (CpuPool pool = new CpuPool(threads)) {
                GemmBench.plainGemm(pool, a, b, c, m, n, k);
            }
            assertTrue(GemmBench.maxRelError(c, want) < 1e-6, "threads " + threads);
        }
    }

    @Test
    void relativeErrorIsScaledByTheLargestResultAndNaNFails() {
        assertEquals(0.1, GemmBench.maxRelError(new float[] {1.2f, 2f}, new float[] {1f, 2f}), 1e-6);
        assertEquals(0, GemmBench.maxRelError(new float[] {0f}, new float[] {0f}));
        assertTrue(Double.isNaN(GemmBench.maxRelError(new float[] {Float.NaN, 1f}, new float[] {1f, 1f})));
        assertTrue(!(GemmBench.maxRelError(new float[] {Float.NaN}, new float[] {1f}) <= GemmBench.MAX_REL_ERROR),
                "a NaN result must not pass the limit");
    }

    @Test
    void allReduceCheckCatchesADroppedBlock() {
        int n = 1000;
        List<float[]> data = new ArrayList<>();
        for (int r = 0; r < 3; r++) {
            float[] x = new float[n];
            for (int i = 0; i < n; i++) {
                x[i] = AllReduceBench.expected(3, i);
            }
            data.add(x);
        }
        AllReduceBench.check(data, n);
        // A ring that loses one rank's contribution to part of the last chunk.
        for (int i = 700; i < 720; i++) {
            data.get(2)[i] -= AllReduceBench.input(1, i);
        }
        IllegalStateException e = assertThrows(IllegalStateException.class, () -> AllReduceBench.check(data, n));
        assertTrue(e.getMessage().contains("rank 2 holds") && e.getMessage().contains("at element 700"), e.getMessage());
    }

    @Test
    void allReduceReportsAlgorithmAndBusBandwidthOfCheckedRuns() throws Exception {
        CliRun r = CliRun.of("bench", "allreduce", "--workers", "3", "--mb", "1", "--reps", "2", "--json");
        assertEquals(0, r.code(), r.err());
        JsonNode row = new ObjectMapper().readTree(r.out().strip());
        List<String> names = new ArrayList<>();
        row.fieldNames().forEachRemaining(names::add);
        assertEquals(List.of("bench", "workers", "mb", "gbps", "memcpy_gbps", "busbw_gbps", "median_gbps", "impl"), names);
        double algbw = row.get("gbps").asDouble();
        assertTrue(algbw > 0, r.out());
        // nccl-tests: busbw = algbw * 2(n-1)/n, here 4/3 (both rounded to 0.01).
        assertEquals(algbw * 4 / 3, row.get("busbw_gbps").asDouble(), 0.02, r.out());
        assertTrue(r.err().contains("sums checked"), r.err());
    }
}
