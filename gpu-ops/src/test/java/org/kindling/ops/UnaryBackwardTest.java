package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.kindling.ops.Reference.widen;

import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.EnumSource;
import org.junit.jupiter.params.provider.MethodSource;
import org.kindling.ops.cpu.CpuDevice;
import org.kindling.ops.reference.ReferenceDevice;

/**
 * {@link Backend#unaryBackward}: each op's {@link UnaryOp#derivative} against central finite
 * differences of {@link UnaryOp#apply}, its conventions where there is no derivative, and the CPU
 * and reference devices (accumulating) against {@link Reference#unaryBackward} (fp32 tolerance 2e-6).
 */
class UnaryBackwardTest {
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

    /** Where the op is defined: positive x for SQRT, LOG and RECIPROCAL, both signs otherwise. */
    private static boolean positive(UnaryOp op) {
        return op == UnaryOp.LOG || op == UnaryOp.SQRT || op == UnaryOp.RECIPROCAL;
    }

    private static float[] inputs(UnaryOp op, long seed, int n) {
        return positive(op) ? Check.uniform(seed, n, 0.05, 4) : Check.uniform(seed, n, -4, 4);
    }

    @ParameterizedTest
    @EnumSource(UnaryOp.class)
    void derivativeMatchesCentralDifferences(UnaryOp op) {
        double h = 1e-6;
        double[] x = widen(inputs(op, 7, 200));
        for (double v : x) {
            // Stay h away from the kinks of ABS, RELU and ELU_PLUS_ONE at 0, where the convention decides.
            if (Math.abs(v) < 10 * h) {
                continue;
            }
            double numeric = (op.apply(v + h) - op.apply(v - h)) / (2 * h);
            double analytic = op.derivative(v);
            assertEquals(numeric, analytic, 1e-6 * (1 + Math.abs(numeric)), op + "′(" + v + ")");
        }
    }

    @Test
    void conventionsWhereThereIsNoDerivative() {
        assertEquals(0.0, UnaryOp.ABS.derivative(0));
        assertEquals(0.0, UnaryOp.RELU.derivative(0));
        assertEquals(Double.POSITIVE_INFINITY, UnaryOp.SQRT.derivative(0));
        assertEquals(1.0, UnaryOp.ELU_PLUS_ONE.derivative(0), "elu + 1 is differentiable at 0");
        assertEquals(1.0, UnaryOp.ELU_PLUS_ONE.apply(0), "elu + 1 is continuous at 0");
        assertTrue(UnaryOp.ELU_PLUS_ONE.apply(-50) > 0, "elu + 1 stays positive");
    }

    static Stream<Arguments> cases() {
        List<Arguments> out = new ArrayList<>();
        for (UnaryOp op : UnaryOp.values()) {
            for (int n : Check.SIZES) {
                out.add(Arguments.of(op, n));
            }
            out.add(Arguments.of(op, 97 * 1025));
        }
        return out.stream();
    }

    /** Both devices add dy·f′(x) onto a random dx; dx aliasing dy doubles as the in-place case. */
    @ParameterizedTest(name = "{0} n={1}")
    @MethodSource("cases")
    void devicesMatchReference(UnaryOp op, int n) {
        float[] x = inputs(op, n, n);
        float[] dy = Check.uniform(n + 1, n);
        float[] dx0 = Check.uniform(n + 2, n);
        double[] want = Check.plus(Reference.unaryBackward(op, widen(dy), widen(x)), dx0);
        for (Device d : new Device[] {cpu, ref}) {
            try (Tensor tx = d.fromFloats(x, n); Tensor tdy = d.fromFloats(dy, n); Tensor dx = d.fromFloats(dx0, n)) {
                d.backend().unaryBackward(op, dx, tdy, tx);
                Check.close(op + " on " + d.backend().name(), want, dx.toFloatArray(), 2e-6);
                d.backend().unaryBackward(op, tdy, tdy, tx);
                double[] twice = Check.plus(Reference.unaryBackward(op, widen(dy), widen(x)), dy);
                Check.close(op + " with dx = dy on " + d.backend().name(), twice, tdy.toFloatArray(), 2e-6);
            }
        }
    }

    @Test
    void badShapesNameTheArgument() {
        for (Device d : new Device[] {cpu, ref}) {
            try (Tensor x = d.allocate(DType.F32, 4, 3); Tensor dy = d.allocate(DType.F32, 4, 3);
                 Tensor small = d.allocate(DType.F32, 11); Tensor ints = d.allocate(DType.I32, 4, 3)) {
                Backend be = d.backend();
                String m = assertThrows(IllegalArgumentException.class,
                        () -> be.unaryBackward(UnaryOp.TANH, small, dy, x)).getMessage();
                assertTrue(m.contains("unary backward dx"), m);
                m = assertThrows(IllegalArgumentException.class,
                        () -> be.unaryBackward(UnaryOp.TANH, dy, small, x)).getMessage();
                assertTrue(m.contains("unary backward dy"), m);
                m = assertThrows(IllegalArgumentException.class,
                        () -> be.unaryBackward(UnaryOp.TANH, dy, dy, ints)).getMessage();
                assertTrue(m.contains("x must be F32"), m);
            }
        }
    }
}
