package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.kindling.ops.AttentionTest.assertOracle;
import static org.kindling.ops.AttentionTest.cu;
import static org.kindling.ops.AttentionTest.gaussian;
import static org.kindling.ops.AttentionTest.maxAbs;
import static org.kindling.ops.AttentionTest.maxErr;
import static org.kindling.ops.Reference.widen;

import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;
import org.kindling.ops.cpu.CpuDevice;
import org.kindling.ops.reference.ReferenceDevice;

/**
 * The grouped GEMM of dropless MoE in each form the MoE forward and backward use, at awkward
 * sizes (empty groups, groups of 1 and 97 rows, K = 59, N = 33): against the fp64
 * {@link Reference} the CPU result's max error must be at most 2× that of a naive fp32 loop
 * written here from the definition; the CPU result equals one plain {@link Backend#gemm} per group
 * bit for bit; the reference device gives the fp64 twin; bad layouts, shapes and offsets are
 * named in the error.
 */
class GroupedGemmTest {
    private static final int K = 59;
    private static final int N = 33;
    private static Device cpu;
    private static Device ref;

    @BeforeAll
    static void open() {
        cpu = CpuDevice.open(3);
        ref = ReferenceDevice.open();
    }

    @AfterAll
    static void close() {
        cpu.close();
        ref.close();
    }

    /** The forms of the MoE layer: name, the whole product's layout, the operands' shapes. */
    enum Form {
        /** y_e = x_e·W_e, W [E, K, N]. */
        FORWARD(false, false),
        /** y_e = x_e·W_eᵀ, W [E, N, K]. */
        FORWARD_TRANSPOSED(false, true),
        /** dx_e = dy_e·W_eᵀ for W [E, K, N]: rows grouped, n = K, k = N. */
        INPUT_GRADIENT(false, true),
        /** dW_e += x_eᵀ·dy_e into dW [E, K, N]. */
        WEIGHT_GRADIENT(true, false);

        final boolean transA;
        final boolean transB;

        Form(boolean transA, boolean transB) {
            this.transA = transA;
            this.transB = transB;
        }

        Gemm gemm(int rows) {
            return switch (this) {
                case FORWARD, FORWARD_TRANSPOSED -> Gemm.of(false, transB, rows, N, K);
                case INPUT_GRADIENT -> Gemm.of(false, true, rows, K, N);
                case WEIGHT_GRADIENT -> Gemm.of(true, false, K, N, rows).scaled(1f, 1f);
            };
        }
    }

    static Stream<Arguments> cases() {
        List<int[]> groups = List.of(new int[] {97}, new int[] {0, 0, 0}, new int[] {0, 1, 97}, new int[] {97, 0, 1, 0, 5, 97, 1, 0});
        List<Arguments> out = new ArrayList<>();
        for (Form f : Form.values()) {
            for (int[] g : groups) {
                out.add(Arguments.of(f, g));
            }
        }
        return out.stream();
    }

    record Operands(Gemm g, int[] offsets, float[] c, float[] a, float[] b, int[] cShape, int[] aShape, int[] bShape) {
    }

    static Operands operands(Form f, int[] sizes, long seed) {
        int[] off = cu(sizes);
        int rows = off[off.length - 1];
        int e = sizes.length;
        Gemm g = f.gemm(rows);
        int[] aShape = f.transA ? new int[] {rows, g.m()} : new int[] {rows, g.k()};
        int[] bShape = f.transA ? new int[] {rows, g.n()}
                : f.transB ? new int[] {e, g.n(), g.k()} : new int[] {e, g.k(), g.n()};
        int[] cShape = f.transA ? new int[] {e, g.m(), g.n()} : new int[] {rows, g.n()};
        return new Operands(g, off, gaussian(seed, Tensor.numel(cShape)), gaussian(seed + 1, Tensor.numel(aShape)),
                gaussian(seed + 2, Tensor.numel(bShape)), cShape, aShape, bShape);
    }

    static float[] run(Device d, Operands o) {
        try (Tensor c = d.fromFloats(o.c(), o.cShape()); Tensor a = d.fromFloats(o.a(), o.aShape());
             Tensor b = d.fromFloats(o.b(), o.bShape()); Tensor off = d.fromInts(o.offsets(), o.offsets().length)) {
            d.backend().groupedGemm(o.g(), c, a, b, off);
            return c.toFloatArray();
        }
    }

    /** The definition, in fp32, one sum per element in order; independent of {@link GroupedGemm}'s layout helpers. */
    static float[] naive(Operands o) {
        Gemm g = o.g();
        int[] off = o.offsets();
        float[] c = o.c().clone();
        for (int e = 0; e + 1 < off.length; e++) {
            if (g.transA()) {
                for (int i = 0; i < g.m(); i++) {
                    for (int j = 0; j < g.n(); j++) {
                        float s = 0;
                        for (int r = off[e]; r < off[e + 1]; r++) {
                            s += o.a()[r * g.m() + i] * o.b()[r * g.n() + j];
                        }
                        int at = (e * g.m() + i) * g.n() + j;
                        c[at] = g.alpha() * s + g.beta() * c[at];
                    }
                }
            } else {
                for (int r = off[e]; r < off[e + 1]; r++) {
                    for (int j = 0; j < g.n(); j++) {
                        float s = 0;
                        for (int p = 0; p < g.k(); p++) {
                            float w = g.transB() ? o.b()[(e * g.n() + j) * g.k() + p] : o.b()[(e * g.k() + p) * g.n() + j];
                            s += o.a()[r * g.k() + p] * w;
                        }
                        c[r * g.n() + j] = g.alpha() * s + (g.beta() == 0f ? 0f : g.beta() * c[r * g.n() + j]);
                    }
                }
            }
        }
        return c;
    }

    static double[] twin(Operands o) {
        try (Tensor off = cpu.fromInts(o.offsets(), o.offsets().length); Tensor c = cpu.fromFloats(o.c(), o.cShape());
             Tensor a = cpu.fromFloats(o.a(), o.aShape()); Tensor b = cpu.fromFloats(o.b(), o.bShape())) {
            GroupedGemm gg = GroupedGemm.check(o.g(), c, a, b, off);
            return Reference.groupedGemm(gg, widen(o.c()), widen(o.a()), widen(o.b()));
        }
    }

    @ParameterizedTest(name = "{0} groups={1}")
    @MethodSource("cases")
    void matchesOracle(Form f, int[] sizes) {
        Operands o = operands(f, sizes, 31L * sizes.length + f.ordinal());
        double[] want = twin(o);
        float[] naive = naive(o);
        // The oracle is only as strict as the naive loop is right: it must be fp32-close first.
        assertTrue(maxErr(want, naive) <= 1e-4 * Math.max(1, maxAbs(want)), f + ": the naive loop disagrees with the twin");
        assertOracle(f + " c", want, run(cpu, o), naive, 2);
    }

    @ParameterizedTest(name = "{0} groups={1}")
    @MethodSource("cases")
    void equalsOnePlainGemmPerGroup(Form f, int[] sizes) {
        Operands o = operands(f, sizes, 7L * sizes.length + f.ordinal());
        Backend be = cpu.backend();
        int[] off = o.offsets();
        Gemm g = o.g();
        float[] want;
        try (Tensor c = cpu.fromFloats(o.c(), o.cShape()); Tensor a = cpu.fromFloats(o.a(), o.aShape());
             Tensor b = cpu.fromFloats(o.b(), o.bShape())) {
            for (int e = 0; e + 1 < off.length; e++) {
                int rows = off[e + 1] - off[e];
                if (g.transA()) {
                    be.gemm(Gemm.of(true, false, g.m(), g.n(), rows).scaled(g.alpha(), g.beta()),
                            c.view(e * g.m() * g.n(), g.m(), g.n()), a.view(off[e] * g.m(), rows, g.m()),
                            b.view(off[e] * g.n(), rows, g.n()));
                } else if (rows > 0) {
                    be.gemm(Gemm.of(false, g.transB(), rows, g.n(), g.k()).scaled(g.alpha(), g.beta()),
                            c.view(off[e] * g.n(), rows, g.n()), a.view(off[e] * g.k(), rows, g.k()),
                            b.view(e * g.k() * g.n(), g.k() * g.n()));
                }
            }
            want = c.toFloatArray();
        }
        assertArrayEquals(want, run(cpu, o));
    }

    @ParameterizedTest(name = "{0} groups={1}")
    @MethodSource("cases")
    void referenceDeviceGivesTheTwin(Form f, int[] sizes) {
        Operands o = operands(f, sizes, 11L * sizes.length + f.ordinal());
        double[] want = twin(o);
        try (Tensor c = ref.fromFloats(o.c(), o.cShape()); Tensor a = ref.fromFloats(o.a(), o.aShape());
             Tensor b = ref.fromFloats(o.b(), o.bShape()); Tensor off = ref.fromInts(o.offsets(), o.offsets().length)) {
            ref.backend().groupedGemm(o.g(), c, a, b, off);
            assertArrayEquals(want, c.toDoubleArray());
        }
    }

    @Test
    void emptyGroupOfTheWeightGradientStillAppliesBeta() {
        Operands o = operands(Form.WEIGHT_GRADIENT, new int[] {0, 1}, 5);
        Operands zeroBeta = new Operands(o.g().scaled(1f, 0f), o.offsets(), o.c(), o.a(), o.b(), o.cShape(), o.aShape(),
                o.bShape());
        float[] got = run(cpu, zeroBeta);
        for (int i = 0; i < K * N; i++) {
            assertTrue(got[i] == 0f, "dW[0] element " + i + " is " + got[i] + " with beta 0 and no rows");
        }
    }

    static String error(Gemm g, int[] cShape, int[] aShape, int[] bShape, int[] offsets) {
        try (Tensor c = cpu.allocate(DType.F32, cShape); Tensor a = cpu.allocate(DType.F32, aShape);
             Tensor b = cpu.allocate(DType.F32, bShape); Tensor off = cpu.fromInts(offsets, offsets.length)) {
            return assertThrows(IllegalArgumentException.class, () -> cpu.backend().groupedGemm(g, c, a, b, off))
                    .getMessage();
        }
    }

    static void assertNames(String message, String... parts) {
        for (String p : parts) {
            assertTrue(message.contains(p), "'" + message + "' should name '" + p + "'");
        }
    }

    @Test
    void badShapesAndOffsetsAreNamed() {
        Gemm fwd = Gemm.of(false, false, 5, N, K);
        int[] good = {0, 2, 5};
        assertNames(error(fwd, new int[] {5, N}, new int[] {5, K}, new int[] {3, K, N}, good), "grouped gemm b", "[2, 59, 33]");
        assertNames(error(fwd, new int[] {4, N}, new int[] {5, K}, new int[] {2, K, N}, good), "grouped gemm c", "[5, 33]");
        assertNames(error(fwd, new int[] {5, N}, new int[] {5, K + 1}, new int[] {2, K, N}, good), "grouped gemm a", "[5, 59]");
        assertNames(error(fwd, new int[] {5, N}, new int[] {5, K}, new int[] {2, K, N}, new int[] {0, 3, 2}),
                "grouped gemm offsets[2] = 2", "less than");
        assertNames(error(fwd, new int[] {5, N}, new int[] {5, K}, new int[] {2, K, N}, new int[] {1, 2, 5}),
                "grouped gemm offsets[0] must be 0");
        assertNames(error(fwd, new int[] {5, N}, new int[] {5, K}, new int[] {2, K, N}, new int[] {0, 2, 4}),
                "grouped gemm offsets ends at 4", "5 rows");
        assertNames(error(fwd, new int[] {5, N}, new int[] {5, K}, new int[] {1, K, N}, new int[] {0}),
                "grouped gemm offsets must be I32 [E + 1]");
        Gemm dw = Gemm.of(true, false, K, N, 5);
        assertNames(error(dw, new int[] {3, K, N}, new int[] {5, K}, new int[] {5, N}, good), "grouped gemm c", "[2, 59, 33]");
        assertNames(error(Gemm.of(true, true, K, N, 5), new int[] {2, K, N}, new int[] {5, K}, new int[] {N, 5}, good),
                "B cannot be transposed");
        assertNames(error(Gemm.batched(2, false, false, 5, N, K), new int[] {5, N}, new int[] {5, K}, new int[] {2, K, N},
                good), "tightly packed single-product layout");
        assertNames(error(fwd.leading(K + 1, N, N), new int[] {5, N}, new int[] {5, K + 1}, new int[] {2, K, N}, good),
                "tightly packed single-product layout");
        try (Tensor c = cpu.allocate(DType.F32, 5, N); Tensor a = cpu.allocate(DType.F32, 5, K);
             Tensor b = cpu.allocate(DType.F32, 2, K, N); Tensor off = cpu.fromFloats(new float[] {0, 2, 5}, 3)) {
            assertNames(assertThrows(IllegalArgumentException.class, () -> cpu.backend().groupedGemm(fwd, c, a, b, off))
                    .getMessage(), "grouped gemm offsets must be I32");
        }
        try (Tensor x = cpu.allocate(DType.F32, 5, K); Tensor b = cpu.allocate(DType.F32, 2, K, K);
             Tensor off = cpu.fromInts(good, 3)) {
            assertNames(assertThrows(IllegalArgumentException.class,
                    () -> cpu.backend().groupedGemm(Gemm.of(false, false, 5, K, K), x, x, b, off)).getMessage(),
                    "grouped gemm c", "must not overlap a");
        }
    }
}
