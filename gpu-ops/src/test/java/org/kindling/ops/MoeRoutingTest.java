package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.kindling.ops.AttentionTest.gaussian;

import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.function.Executable;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/**
 * MoE routing kernels (top-k, expert offsets, grouping permutation, row gather and weighted
 * scatter-add): the CPU backend against the fp64 reference device, exactly for every integer
 * output, top-k values and gathers (copies), and for the scatter-add bit-identical to a plain fp32
 * loop in row order and within 1e-6 of Σ|terms| of the fp64 sum; permute then un-permute is the
 * identity; ties go to the lower expert; empty slots (−1, entries dropped past capacity) gather
 * zero rows and scatter nothing; results do not depend on the thread count; bad operands are
 * named in the error.
 */
class MoeRoutingTest extends RoutingDevices {
    static Stream<Arguments> shapes() {
        Stream.Builder<Arguments> b = Stream.builder();
        for (int t : new int[] {1, 97, 1025}) {
            for (int e : new int[] {1, 3, 8}) {
                for (int k : new int[] {1, 2}) {
                    if (k <= e) {
                        b.add(Arguments.of(t, e, k));
                    }
                }
            }
        }
        return b.build();
    }

    /** Router scores on a coarse grid (multiples of 1/2), so rows hold many ties, with ±0 among them. */
    static float[] scores(long seed, int n) {
        float[] x = gaussian(seed, n);
        for (int i = 0; i < n; i++) {
            x[i] = Math.round(x[i] * 2) / 2f;
            if (x[i] == 0 && i % 2 == 1) {
                x[i] = -0f;
            }
        }
        return x;
    }

    /** Everything the routing produces on one device for one input. */
    record Routed(float[] values, int[] indices, int[] offsets, int[] order, float[] gathered, float[] combined) {
    }

    /**
     * The MoE layer's data path without the experts: route, group the (token, choice) entries by
     * expert, gather their tokens' rows in that order, and scatter them back weighted by the gates.
     */
    static Routed route(Device d, float[] scores, float[] x, float[] init, int t, int e, int k) {
        Backend be = d.backend();
        try (Tensor s = d.fromFloats(scores, t, e);
             Tensor tx = d.fromFloats(x, t, C);
             Tensor values = d.allocate(DType.F32, t, k);
             Tensor indices = d.allocate(DType.I32, t, k);
             Tensor offsets = d.allocate(DType.I32, e + 1);
             Tensor order = d.allocate(DType.I32, t * k);
             Tensor tokens = d.allocate(DType.I32, t * k);
             Tensor gates = d.allocate(DType.F32, t * k);
             Tensor grouped = d.allocate(DType.F32, t * k, C);
             Tensor out = d.fromFloats(init, t, C)) {
            be.topK(values, indices, s, k);
            be.expertOffsets(offsets, indices, e);
            be.permutation(order, indices, offsets);
            int[] ord = order.toIntArray();
            float[] vals = values.toFloatArray();
            int[] tok = new int[ord.length];
            float[] g = new float[ord.length];
            for (int j = 0; j < ord.length; j++) {
                tok[j] = ord[j] / k;
                g[j] = vals[ord[j]];
            }
            tokens.copyFrom(tok);
            gates.copyFrom(g);
            be.gatherRows(grouped, tx, tokens);
            be.scatterAddRows(out, grouped, tokens, gates);
            return new Routed(vals, indices.toIntArray(), offsets.toIntArray(), ord, grouped.toFloatArray(),
                    out.toFloatArray());
        }
    }

    @ParameterizedTest(name = "T={0} E={1} k={2}")
    @MethodSource("shapes")
    void cpuMatchesReference(int t, int e, int k) {
        float[] scores = scores(t * 131L + e * 7L + k, t * e);
        float[] x = gaussian(t + 3L, t * C);
        float[] init = gaussian(t + 4L, t * C);
        Routed got = route(cpu, scores, x, init, t, e, k);
        Routed want = route(ref, scores, x, init, t, e, k);
        assertArrayEquals(want.indices(), got.indices(), "topK indices");
        assertArrayEquals(want.values(), got.values(), "topK values");
        assertArrayEquals(want.offsets(), got.offsets(), "expert offsets");
        assertArrayEquals(want.order(), got.order(), "permutation");
        assertArrayEquals(want.gathered(), got.gathered(), "gathered rows");
        assertCombined(scores, x, init, got, t, e, k);
        assertArrayEquals(got.combined(), route(cpu1, scores, x, init, t, e, k).combined(),
                "scatter-add differs between 1 and 3 threads");
        assertRouting(scores, got, t, e, k);
    }

    /** The scatter-add: bit-identical to an fp32 loop in row order, and within 1e-6·Σ|terms| of fp64. */
    private static void assertCombined(float[] scores, float[] x, float[] init, Routed got, int t, int e, int k) {
        float[] plain = init.clone();
        double[] exact = new double[init.length];
        double[] size = new double[init.length];
        for (int i = 0; i < init.length; i++) {
            exact[i] = init[i];
            size[i] = Math.abs(init[i]);
        }
        for (int j = 0; j < got.order().length; j++) {
            int token = got.order()[j] / k;
            float w = got.values()[got.order()[j]];
            for (int c = 0; c < C; c++) {
                plain[token * C + c] += w * x[token * C + c];
                exact[token * C + c] += (double) w * x[token * C + c];
                size[token * C + c] += Math.abs((double) w * x[token * C + c]);
            }
        }
        assertArrayEquals(plain, got.combined(), "scatter-add vs an fp32 loop in row order");
        for (int i = 0; i < init.length; i++) {
            double err = Math.abs(got.combined()[i] - exact[i]);
            assertTrue(err <= 1e-6 * size[i], "scatter-add element " + i + " off by " + err);
        }
    }

    /** The definitions, checked directly: top-k order and ties, the histogram, a stable grouping. */
    private static void assertRouting(float[] scores, Routed got, int t, int e, int k) {
        for (int r = 0; r < t; r++) {
            for (int j = 0; j < k; j++) {
                int id = got.indices()[r * k + j];
                assertEquals(scores[r * e + id], got.values()[r * k + j], 0f);
                for (int other = 0; other < e; other++) {
                    boolean chosen = false;
                    for (int q = 0; q < k; q++) {
                        chosen |= got.indices()[r * k + q] == other;
                    }
                    float s = scores[r * e + other];
                    float v = got.values()[r * k + j];
                    // An unchosen expert never beats a chosen one, nor ties it from a lower index.
                    assertTrue(chosen || s < v || (s == v && other > id), "row " + r + " skipped expert " + other);
                }
                if (j > 0) {
                    float prev = got.values()[r * k + j - 1];
                    int prevId = got.indices()[r * k + j - 1];
                    assertTrue(prev > got.values()[r * k + j] || (prev == got.values()[r * k + j] && prevId < id),
                            "row " + r + " not descending with ties by index");
                }
            }
        }
        assertEquals(0, got.offsets()[0]);
        assertEquals(t * k, got.offsets()[e]);
        boolean[] seen = new boolean[t * k];
        for (int ex = 0; ex < e; ex++) {
            for (int j = got.offsets()[ex]; j < got.offsets()[ex + 1]; j++) {
                int entry = got.order()[j];
                assertTrue(!seen[entry], "entry " + entry + " appears twice");
                seen[entry] = true;
                assertEquals(ex, got.indices()[entry], "order[" + j + "] is outside expert " + ex + "'s range");
                assertTrue(j == got.offsets()[ex] || got.order()[j - 1] < entry, "expert " + ex + " is not stable");
            }
        }
    }

    @Test
    void tiesGoToTheLowerExpert() {
        float[] scores = {1, 1, 1, 1, 0, 2, 2, 0, -0f, 0f, -1, -0f};
        for (Device d : new Device[] {cpu, ref}) {
            try (Tensor s = d.fromFloats(scores, 3, 4);
                 Tensor v = d.allocate(DType.F32, 3, 2);
                 Tensor i = d.allocate(DType.I32, 3, 2)) {
                d.backend().topK(v, i, s, 2);
                assertArrayEquals(new int[] {0, 1, 1, 2, 0, 1}, i.toIntArray(), d.backend().name());
                assertArrayEquals(new float[] {1, 1, 2, 2, -0f, 0f}, v.toFloatArray(), d.backend().name());
            }
        }
    }

    /** Gathering rows by a permutation and scattering them back by the same one restores x exactly. */
    @ParameterizedTest(name = "T={0} E={1} k={2}")
    @MethodSource("shapes")
    void permuteThenUnpermuteIsIdentity(int t, int e, int k) {
        int n = t * k;
        float[] x = gaussian(n + 11L, n * C);
        int[] ids = Check.ints(n + 12L, n, e);
        for (Device d : new Device[] {cpu, ref}) {
            Backend be = d.backend();
            try (Tensor tx = d.fromFloats(x, n, C);
                 Tensor indices = d.fromInts(ids, n);
                 Tensor offsets = d.allocate(DType.I32, e + 1);
                 Tensor order = d.allocate(DType.I32, n);
                 Tensor grouped = d.allocate(DType.F32, n, C);
                 Tensor back = d.allocate(DType.F32, n, C)) {
                be.expertOffsets(offsets, indices, e);
                be.permutation(order, indices, offsets);
                be.gatherRows(grouped, tx, order);
                be.fill(back, 0f);
                be.scatterAddRows(back, grouped, order, null);
                assertArrayEquals(x, back.toFloatArray(), d.backend().name());
            }
        }
    }

    /**
     * The Switch data path with a capacity: slots from capacitySlots, their tokens from
     * entryTokens, a gather (zero rows in empty slots) and a weighted scatter-add that skips them,
     * against the reference and a plain fp32 loop over the kept slots.
     */
    @ParameterizedTest(name = "T={0} E={1} k={2}")
    @MethodSource("shapes")
    void emptySlotsGatherZerosAndScatterNothing(int t, int e, int k) {
        int n = t * k;
        int capacity = Math.max(1, n / e);
        // Half the entries go to expert 0, so it overflows its capacity while the others leave slots empty.
        int[] ids = Check.ints(n + 61L, n, e);
        for (int i = 0; i < n; i += 2) {
            ids[i] = 0;
        }
        float[] x = gaussian(n + 62L, t * C);
        float[] w = gaussian(n + 63L, e * capacity);
        float[] init = gaussian(n + 64L, t * C);
        float[][] gathered = new float[2][];
        float[][] combined = new float[2][];
        int[] tokens = null;
        Device[] devices = {cpu, ref};
        for (int di = 0; di < 2; di++) {
            Device d = devices[di];
            Backend be = d.backend();
            try (Tensor indices = d.fromInts(ids, n);
                 Tensor offsets = d.allocate(DType.I32, e + 1);
                 Tensor order = d.allocate(DType.I32, n);
                 Tensor slots = d.allocate(DType.I32, e * capacity);
                 Tensor tx = d.fromFloats(x, t, C);
                 Tensor tw = d.fromFloats(w, e * capacity);
                 Tensor grouped = d.allocate(DType.F32, e * capacity, C);
                 Tensor out = d.fromFloats(init, t, C)) {
                be.expertOffsets(offsets, indices, e);
                be.permutation(order, indices, offsets);
                be.capacitySlots(slots, order, offsets, capacity);
                be.entryTokens(slots, slots, k);
                be.fill(grouped, 1f);
                be.gatherRows(grouped, tx, slots);
                be.scatterAddRows(out, grouped, slots, tw);
                tokens = slots.toIntArray();
                gathered[di] = grouped.toFloatArray();
                combined[di] = out.toFloatArray();
            }
        }
        assertArrayEquals(gathered[1], gathered[0], "gathered rows vs reference");
        float[] plain = init.clone();
        int empty = 0;
        for (int i = 0; i < tokens.length; i++) {
            for (int c = 0; c < C; c++) {
                float want = tokens[i] < 0 ? 0f : x[tokens[i] * C + c];
                assertEquals(want, gathered[0][i * C + c], 0f, "slot " + i + " (token " + tokens[i] + ")");
                if (tokens[i] >= 0) {
                    plain[tokens[i] * C + c] += w[i] * x[tokens[i] * C + c];
                }
            }
            empty += tokens[i] < 0 ? 1 : 0;
        }
        assertArrayEquals(plain, combined[0], "scatter-add vs an fp32 loop over the kept slots");
        Check.close("scatter-add vs reference", Reference.widen(combined[1]), combined[0], 1e-5, 1e-5);
        if (e > 1 && n >= 2 * e) {
            assertTrue(empty > 0, "capacity " + capacity + " left no slot empty");
            assertTrue(tokens.length - empty < n, "capacity " + capacity + " dropped no entry");
        }
    }

    /** Many rows into few: every destination sums its rows in row order, whatever the thread count. */
    @Test
    void scatterManyToOneIsDeterministic() {
        int n = 1025;
        int dense = 3;
        float[] x = gaussian(21, n * C);
        float[] w = gaussian(22, n);
        int[] rows = Check.ints(23, n, dense);
        float[] plain = new float[dense * C];
        for (int i = 0; i < n; i++) {
            for (int c = 0; c < C; c++) {
                plain[rows[i] * C + c] += w[i] * x[i * C + c];
            }
        }
        for (Device d : new Device[] {cpu, cpu1}) {
            try (Tensor tx = d.fromFloats(x, n, C);
                 Tensor tw = d.fromFloats(w, n);
                 Tensor tr = d.fromInts(rows, n);
                 Tensor out = d.allocate(DType.F32, dense, C)) {
                d.backend().fill(out, 0f);
                d.backend().scatterAddRows(out, tx, tr, tw);
                assertArrayEquals(plain, out.toFloatArray());
            }
        }
    }

    @Test
    void badOperandsAreNamed() {
        for (Device d : new Device[] {cpu, ref}) {
            Backend be = d.backend();
            try (Tensor s = d.fromFloats(new float[] {1, Float.NaN, 0, 2, 3, 4}, 2, 3);
                 Tensor v = d.allocate(DType.F32, 2, 2);
                 Tensor v3 = d.allocate(DType.F32, 2, 3);
                 Tensor i = d.allocate(DType.I32, 2, 2);
                 Tensor ids = d.fromInts(new int[] {0, 2, 1, 3}, 4);
                 Tensor badIds = d.fromInts(new int[] {0, 2, 1, 4}, 4);
                 Tensor negIds = d.fromInts(new int[] {0, -2, 1, -1}, 4);
                 Tensor off = d.allocate(DType.I32, 5);
                 Tensor wrongOff = d.fromInts(new int[] {0, 1, 1, 3, 4}, 5);
                 Tensor order = d.allocate(DType.I32, 4);
                 Tensor x = d.fromFloats(new float[4 * 3], 4, 3);
                 Tensor out = d.allocate(DType.F32, 4, 3);
                 Tensor narrow = d.allocate(DType.F32, 4, 2);
                 Tensor w = d.allocate(DType.F32, 3)) {
                assertMessage(() -> be.topK(v, i, s, 0), "topK k must be in [1, E = 3]");
                assertMessage(() -> be.topK(v, i, s, 4), "topK k must be in [1, E = 3]");
                assertMessage(() -> be.topK(v3, i, s, 2), "topK values");
                assertMessage(() -> be.topK(v, v, s, 2), "topK indices");
                assertMessage(() -> be.topK(v, i, s, 2), "topK x[0, 1] is NaN");
                assertMessage(() -> be.expertOffsets(order, ids, 4), "expertOffsets offsets (E + 1)");
                assertMessage(() -> be.expertOffsets(off, badIds, 4), "expertOffsets indices[3] = 4 is outside [0, 4)");
                assertMessage(() -> be.expertOffsets(off, ids, 0), "experts must be ≥ 1");
                assertMessage(() -> be.permutation(order, ids, wrongOff),
                        "permutation offsets[2] = 1 but the indices put 2 entries before expert 2");
                assertMessage(() -> be.permutation(off, ids, wrongOff), "permutation order");
                assertMessage(() -> be.gatherRows(out, x, badIds), "gatherRows rows[3] = 4 is outside [0, 4)");
                assertMessage(() -> be.gatherRows(out, x, negIds), "gatherRows rows[1] = -2 is outside [0, 4) and is not −1");
                assertMessage(() -> be.scatterAddRows(out, x, negIds, null), "scatterAddRows rows[1] = -2");
                assertMessage(() -> be.gatherRows(narrow, x, ids), "gatherRows out");
                assertMessage(() -> be.gatherRows(x, x, ids), "must not overlap x");
                assertMessage(() -> be.scatterAddRows(out, x, ids, w), "scatterAddRows weights");
                assertMessage(() -> be.scatterAddRows(out, narrow, ids, null), "scatterAddRows x");
            }
        }
    }

    private static void assertMessage(Executable call, String expected) {
        String m = assertThrows(IllegalArgumentException.class, call).getMessage();
        assertTrue(m.contains(expected), m);
    }
}
