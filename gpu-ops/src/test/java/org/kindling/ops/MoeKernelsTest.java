package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.kindling.ops.AttentionTest.gaussian;

import java.util.Arrays;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * The Switch-style MoE kernels (entry → token rows, capacity slots, row scaling, top-k backward,
 * log-sum-exp rows, uniform noise): the CPU backend against the fp64 reference device, exactly
 * for integer outputs, row scaling, top-k gradients and noise (one rounding each), log-sum-exp
 * within 1e-6 relative; capacity against a plain loop over the entries; top-k backward as the
 * adjoint of top-k's gather; results independent of the thread count; bad operands named.
 */
class MoeKernelsTest extends RoutingDevices {
    static Stream<Arguments> shapes() {
        return MoeRoutingTest.shapes();
    }

    // ---- entryTokens ----

    /** Entries in [0, T·k) with about one in five an empty slot. */
    private static int[] entries(long seed, int n, int bound) {
        int[] e = Check.ints(seed, n, bound);
        int[] holes = Check.ints(seed + 1, n, 5);
        for (int i = 0; i < n; i++) {
            if (holes[i] == 0) {
                e[i] = -1;
            }
        }
        return e;
    }

    @ParameterizedTest(name = "T={0} E={1} k={2}")
    @MethodSource("shapes")
    void entryTokensDivideAndKeepEmptySlots(int t, int e, int k) {
        int n = t * k;
        int[] in = entries(t * 17L + k, n, n);
        int[] want = new int[n];
        for (int i = 0; i < n; i++) {
            want[i] = in[i] < 0 ? -1 : in[i] / k;
        }
        for (Device d : new Device[] {cpu, cpu1, ref}) {
            try (Tensor entries = d.fromInts(in, n); Tensor rows = d.allocate(DType.I32, n)) {
                d.backend().entryTokens(rows, entries, k);
                assertArrayEquals(want, rows.toIntArray(), d.backend().name());
                d.backend().entryTokens(entries, entries, k);
                assertArrayEquals(want, entries.toIntArray(), d.backend().name() + " in place");
            }
        }
    }

    // ---- capacitySlots ----

    private static int[] slots(Device d, int[] ids, int e, int capacity) {
        Backend be = d.backend();
        try (Tensor indices = d.fromInts(ids, ids.length);
             Tensor offsets = d.allocate(DType.I32, e + 1);
             Tensor order = d.allocate(DType.I32, ids.length);
             Tensor slots = d.allocate(DType.I32, e * capacity)) {
            be.expertOffsets(offsets, indices, e);
            be.permutation(order, indices, offsets);
            be.capacitySlots(slots, order, offsets, capacity);
            return slots.toIntArray();
        }
    }

    @Test
    void capacityKeepsTheFirstEntriesOfEachExpert() {
        // Entries 0…6 go to experts 1 0 1 1 2 1 0: expert 0 gets {1, 6}, 1 gets {0, 2, 3, 5}, 2 gets {4}.
        int[] ids = {1, 0, 1, 1, 2, 1, 0};
        for (Device d : new Device[] {cpu, ref}) {
            String n = d.backend().name();
            assertArrayEquals(new int[] {1, 0, 4}, slots(d, ids, 3, 1), n + " capacity 1");
            assertArrayEquals(new int[] {1, 6, 0, 2, 4, -1}, slots(d, ids, 3, 2), n + " capacity 2");
            assertArrayEquals(new int[] {1, 6, -1, -1, 0, 2, 3, 5, 4, -1, -1, -1}, slots(d, ids, 3, 4),
                    n + " capacity 4");
        }
    }

    @ParameterizedTest(name = "T={0} E={1} k={2}")
    @MethodSource("shapes")
    void capacityDropsExactlyTheEntriesPastCapacity(int t, int e, int k) {
        int n = t * k;
        int[] ids = Check.ints(n * 5L + e, n, e);
        for (int capacity : new int[] {1, 2, Math.max(1, n / e), n / e + 1, n + 3}) {
            // Plain loop: walk the entries in order, each expert taking them while it has room.
            int[] want = new int[e * capacity];
            Arrays.fill(want, -1);
            int[] used = new int[e];
            int dropped = 0;
            for (int i = 0; i < n; i++) {
                if (used[ids[i]] < capacity) {
                    want[ids[i] * capacity + used[ids[i]]++] = i;
                } else {
                    dropped++;
                }
            }
            int[] got = slots(cpu, ids, e, capacity);
            assertArrayEquals(want, got, "capacity " + capacity);
            assertArrayEquals(got, slots(ref, ids, e, capacity), "reference, capacity " + capacity);
            assertEquals(n - dropped, Arrays.stream(got).filter(s -> s >= 0).count(), "kept entries");
        }
    }

    // ---- scaleRows ----

    @ParameterizedTest(name = "T={0}")
    @MethodSource("org.kindling.ops.MoeKernelsTest#tokens")
    void scaleRowsMatchesReferenceAndMayWorkInPlace(int t) {
        float[] x = gaussian(t + 31L, t * C);
        float[] s = gaussian(t + 32L, t);
        float[] want = null;
        for (Device d : new Device[] {cpu, cpu1, ref}) {
            Backend be = d.backend();
            try (Tensor tx = d.fromFloats(x, t, C); Tensor ts = d.fromFloats(s, t); Tensor out = d.allocate(DType.F32, t, C)) {
                be.scaleRows(out, tx, ts);
                float[] got = out.toFloatArray();
                if (want == null) {
                    want = got;
                    for (int i = 0; i < x.length; i++) {
                        assertEquals(s[i / C] * x[i], got[i], 0f, "element " + i);
                    }
                }
                // One product per element: fp32 and fp64-then-rounded agree bit for bit.
                assertArrayEquals(want, got, be.name());
                be.scaleRows(tx, tx, ts);
                assertArrayEquals(want, tx.toFloatArray(), be.name() + " in place");
            }
        }
    }

    static Stream<Integer> tokens() {
        return Stream.of(1, 97, 1025);
    }

    // ---- topKBackward ----

    /** ⟨topK-gathered x, dv⟩ = ⟨x, topKBackward(dv)⟩, and dx accumulates onto what it held. */
    @ParameterizedTest(name = "T={0} E={1} k={2}")
    @MethodSource("shapes")
    void topKBackwardIsTheAdjointOfTheGather(int t, int e, int k) {
        float[] x = gaussian(t * 3L + e, t * e);
        float[] dv = gaussian(t * 5L + k, t * k);
        float[] prior = gaussian(t * 7L + e, t * e);
        float[] want = null;
        for (Device d : new Device[] {cpu, cpu1, ref}) {
            Backend be = d.backend();
            try (Tensor tx = d.fromFloats(x, t, e);
                 Tensor values = d.allocate(DType.F32, t, k);
                 Tensor indices = d.allocate(DType.I32, t, k);
                 Tensor tdv = d.fromFloats(dv, t, k);
                 Tensor dx = d.allocate(DType.F32, t, e);
                 Tensor acc = d.fromFloats(prior, t, e)) {
                be.topK(values, indices, tx, k);
                be.fill(dx, 0f);
                be.topKBackward(dx, tdv, indices);
                float[] v = values.toFloatArray();
                float[] g = dx.toFloatArray();
                double lhs = 0;
                double rhs = 0;
                double size = 0;
                for (int i = 0; i < v.length; i++) {
                    lhs += (double) v[i] * dv[i];
                    size += Math.abs((double) v[i] * dv[i]);
                }
                for (int i = 0; i < x.length; i++) {
                    rhs += (double) x[i] * g[i];
                }
                assertEquals(lhs, rhs, 1e-12 * size, be.name() + " adjoint");
                be.topKBackward(acc, tdv, indices);
                float[] got = acc.toFloatArray();
                for (int i = 0; i < got.length; i++) {
                    assertEquals(prior[i] + g[i], got[i], 0f, be.name() + " accumulates, element " + i);
                }
                // Distinct ids per row: each element gets at most one add, rounded once on every backend.
                if (want == null) {
                    want = got;
                }
                assertArrayEquals(want, got, be.name());
            }
        }
    }

    @Test
    void topKBackwardSumsRepeatedIdsInOrder() {
        int t = 97;
        int e = 3;
        int k = 4;
        int[] ids = Check.ints(41, t * k, e);
        float[] dv = gaussian(42, t * k);
        float[] want = new float[t * e];
        for (int i = 0; i < t * k; i++) {
            want[(i / k) * e + ids[i]] += dv[i];
        }
        for (Device d : new Device[] {cpu, cpu1}) {
            try (Tensor ti = d.fromInts(ids, t, k); Tensor tdv = d.fromFloats(dv, t, k); Tensor dx = d.allocate(DType.F32, t, e)) {
                d.backend().fill(dx, 0f);
                d.backend().topKBackward(dx, tdv, ti);
                assertArrayEquals(want, dx.toFloatArray());
            }
        }
    }

    // ---- LOG_SUM_EXP ----

    @ParameterizedTest(name = "T={0}")
    @MethodSource("org.kindling.ops.MoeKernelsTest#tokens")
    void logSumExpIsStableForLargeValues(int t) {
        float[] x = gaussian(t + 51L, t * C);
        for (int i = 0; i < x.length; i++) {
            // Rows far beyond exp's float range (e^89 overflows) in both directions.
            x[i] = x[i] * 300 + ((i / C) % 3 - 1) * 1e4f;
        }
        double[] want = Reference.reduceRows(ReduceOp.LOG_SUM_EXP, Reference.widen(x), t, C);
        for (Device d : new Device[] {cpu, cpu1, ref}) {
            try (Tensor tx = d.fromFloats(x, t, C); Tensor out = d.allocate(DType.F32, t)) {
                d.backend().reduceRows(ReduceOp.LOG_SUM_EXP, out, tx);
                float[] got = out.toFloatArray();
                Check.close(d.backend().name(), want, got, 0, 1e-6);
                for (int r = 0; r < t; r++) {
                    float max = Float.NEGATIVE_INFINITY;
                    for (int c = 0; c < C; c++) {
                        max = Math.max(max, x[r * C + c]);
                    }
                    // max ≤ lse ≤ max + log C, up to rounding.
                    assertTrue(got[r] >= max - Math.ulp(max) && got[r] <= max + Math.log(C) + Math.ulp(max) * 2,
                            "row " + r + ": " + got[r] + " vs max " + max);
                }
            }
        }
    }

    @Test
    void logSumExpHandValuesAndInfiniteRows() {
        float inf = Float.POSITIVE_INFINITY;
        float[] x = {1000, 1000, -inf, -inf, -inf, -inf, -inf, 0, -inf, 3e38f, 3e38f, 1, inf, 0, -inf};
        float[] want = {(float) (1000 + Math.log(2)), -inf, 0, (float) (3e38 + Math.log(2)), inf};
        for (Device d : new Device[] {cpu, ref}) {
            try (Tensor tx = d.fromFloats(x, 5, 3); Tensor out = d.allocate(DType.F32, 5)) {
                d.backend().reduceRows(ReduceOp.LOG_SUM_EXP, out, tx);
                assertArrayEquals(want, out.toFloatArray(), d.backend().name());
            }
        }
    }

    // ---- uniformNoise ----

    private static float[] noise(Device d, int n, float lo, float hi, long seed) {
        try (Tensor out = d.allocate(DType.F32, n)) {
            d.backend().uniformNoise(out, lo, hi, seed);
            return out.toFloatArray();
        }
    }

    @Test
    void noiseIsInRangeDeterministicAndSeeded() {
        int n = 100_003;
        float lo = 0.99f;
        float hi = 1.01f;
        float[] a = noise(cpu, n, lo, hi, 7);
        assertArrayEquals(a, noise(cpu, n, lo, hi, 7), "repeat");
        assertArrayEquals(a, noise(cpu1, n, lo, hi, 7), "1 vs 3 threads");
        assertArrayEquals(a, noise(ref, n, lo, hi, 7), "reference");
        float[] b = noise(cpu, n, lo, hi, 8);
        int same = 0;
        double sum = 0;
        for (int i = 0; i < n; i++) {
            assertTrue(a[i] >= lo && a[i] < hi, "element " + i + " = " + a[i]);
            assertEquals(Noise.uniform(7, i, lo, hi), a[i], 0f);
            same += a[i] == b[i] ? 1 : 0;
            sum += a[i];
        }
        assertTrue(same < n / 100, same + " of " + n + " equal under another seed");
        // The mean of n uniforms has standard deviation (hi − lo)/√(12n); allow 5 of them.
        double sigma = (hi - lo) / Math.sqrt(12.0 * n);
        assertEquals((lo + hi) / 2.0, sum / n, 5 * sigma, "mean");
    }

    @Test
    void noiseStaysBelowHiWhereRoundingWouldReachIt() {
        float lo = 1f;
        float hi = Math.nextUp(1f);
        for (float v : noise(cpu, 10_000, lo, hi, 3)) {
            assertEquals(lo, v, 0f);
        }
    }

    // ---- bad operands ----

    @Test
    void badOperandsAreNamed() {
        for (Device d : new Device[] {cpu, ref}) {
            Backend be = d.backend();
            try (Tensor ents = d.fromInts(new int[] {0, 3, -2, 1}, 4);
                 Tensor rows = d.allocate(DType.I32, 4);
                 Tensor rows3 = d.allocate(DType.I32, 3);
                 Tensor order = d.fromInts(new int[] {1, 0, 2, 3}, 4);
                 Tensor off = d.fromInts(new int[] {0, 2, 4}, 3);
                 Tensor down = d.fromInts(new int[] {0, 3, 2}, 3);
                 Tensor short_ = d.fromInts(new int[] {0, 2, 3}, 3);
                 Tensor slots = d.allocate(DType.I32, 4);
                 Tensor slots5 = d.allocate(DType.I32, 5);
                 Tensor x = d.fromFloats(new float[8], 4, 2);
                 Tensor out = d.allocate(DType.F32, 4, 2);
                 Tensor wide = d.allocate(DType.F32, 4, 3);
                 Tensor s = d.fromFloats(new float[4], 4);
                 Tensor s3 = d.fromFloats(new float[3], 3);
                 Tensor dx = d.allocate(DType.F32, 2, 3);
                 Tensor dv = d.fromFloats(new float[4], 2, 2);
                 Tensor dv3 = d.fromFloats(new float[6], 2, 3);
                 Tensor ids = d.fromInts(new int[] {0, 2, 3, 1}, 2, 2)) {
                assertMessage(() -> be.entryTokens(rows, ents, 0), "entryTokens k must be ≥ 1");
                assertMessage(() -> be.entryTokens(rows3, ents, 2), "entryTokens rows");
                assertMessage(() -> be.entryTokens(rows, ents, 2), "entryTokens entries[2] = -2");
                assertMessage(() -> be.capacitySlots(slots, order, off, 0), "capacity must be ≥ 1");
                assertMessage(() -> be.capacitySlots(slots5, order, off, 2), "capacitySlots slots");
                assertMessage(() -> be.capacitySlots(slots, order, down, 2), "capacitySlots offsets[2] = 2 is below");
                assertMessage(() -> be.capacitySlots(slots, order, short_, 2),
                        "capacitySlots offsets[2] = 3 must be the number of entries in order, 4");
                assertMessage(() -> be.scaleRows(out, x, s3), "scaleRows s");
                assertMessage(() -> be.scaleRows(wide, x, s), "scaleRows out");
                assertMessage(() -> be.scaleRows(x.reshape(8).view(2, 3, 2), x.reshape(8).view(0, 3, 2), s3),
                        "must be x");
                assertMessage(() -> be.topKBackward(dx, dv, ids), "topKBackward indices[2] = 3 is outside [0, 3)");
                assertMessage(() -> be.topKBackward(dx, dv3, ids), "topKBackward dvalues");
                assertMessage(() -> be.topKBackward(dx, dv, rows), "topKBackward indices");
                assertMessage(() -> be.uniformNoise(out, 1f, 1f, 0), "uniformNoise needs finite lo < hi");
                assertMessage(() -> be.uniformNoise(out, Float.NaN, 1f, 0), "uniformNoise needs finite lo < hi");
            }
        }
    }

    private static void assertMessage(Executable call, String expected) {
        String m = assertThrows(IllegalArgumentException.class, call).getMessage();
        assertTrue(m.contains(expected), m);
    }
}
