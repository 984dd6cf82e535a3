package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
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

/** Elementwise ops, row reductions and the sum of squares, against {@link Reference}; fp32 tolerance 2e-6. */
class ElementwiseTest {
    private static Device dev;
    private static Backend be;

    @BeforeAll
    static void open() {
        dev = CpuDevice.open(3);
        be = dev.backend();
    }

    @AfterAll
    static void close() {
        dev.close();
    }

    static Stream<Arguments> unaryCases() {
        List<Arguments> out = new ArrayList<>();
        for (UnaryOp op : UnaryOp.values()) {
            for (int n : new int[] {1, 7, 59, 97, 1025, 97 * 1025}) {
                out.add(Arguments.of(op, n));
            }
        }
        return out.stream();
    }

    @ParameterizedTest(name = "{0} n={1}")
    @MethodSource("unaryCases")
    void unaryMatchesReference(UnaryOp op, int n) {
        boolean positive = op == UnaryOp.LOG || op == UnaryOp.SQRT || op == UnaryOp.RECIPROCAL;
        float[] x = positive ? Check.uniform(n, n, 0.05, 4) : Check.uniform(n, n, -4, 4);
        try (Tensor tx = dev.fromFloats(x, n); Tensor out = dev.allocate(DType.F32, n)) {
            be.unary(op, out, tx);
            Check.close(op.name(), Reference.unary(op, widen(x)), out.toFloatArray(), 2e-6);
            be.unary(op, tx, tx);
            assertArrayEquals(out.toFloatArray(), tx.toFloatArray(), "in place");
        }
    }

    @ParameterizedTest(name = "n={0}")
    @MethodSource("org.kindling.ops.Shapes#rowsCols")
    void affineAndFill(int rows, int cols) {
        int n = rows * cols;
        float[] x = Check.uniform(3, n);
        try (Tensor tx = dev.fromFloats(x, rows, cols); Tensor out = dev.allocate(DType.F32, rows, cols)) {
            be.affine(out, tx, -2.5f, 0.25f);
            double[] want = new double[n];
            for (int i = 0; i < n; i++) {
                want[i] = -2.5 * x[i] + 0.25;
            }
            Check.close("affine", want, out.toFloatArray(), 2e-6);
            be.fill(out, 3.5f);
            float[] got = out.toFloatArray();
            for (float v : got) {
                assertEquals(3.5f, v);
            }
        }
    }

    static Stream<Arguments> binaryCases() {
        List<Arguments> out = new ArrayList<>();
        for (BinaryOp op : BinaryOp.values()) {
            for (int[] rc : new int[][] {{1, 1}, {7, 59}, {97, 7}, {1025, 97}}) {
                out.add(Arguments.of(op, rc[0], rc[1], false));
                out.add(Arguments.of(op, rc[0], rc[1], true));
            }
        }
        return out.stream();
    }

    @ParameterizedTest(name = "{0} {1}x{2} broadcast={3}")
    @MethodSource("binaryCases")
    void binaryMatchesReference(BinaryOp op, int rows, int cols, boolean broadcast) {
        int n = rows * cols;
        float[] a = Check.uniform(4, n);
        float[] b = op == BinaryOp.DIV ? Check.uniform(5, broadcast ? cols : n, 0.5, 2)
                : Check.uniform(5, broadcast ? cols : n);
        try (Tensor ta = dev.fromFloats(a, rows, cols); Tensor tb = dev.fromFloats(b, b.length);
             Tensor out = dev.allocate(DType.F32, rows, cols)) {
            be.binary(op, out, ta, tb);
            Check.close(op.name(), Reference.binary(op, widen(a), widen(b)), out.toFloatArray(), 2e-6);
            be.binary(op, ta, ta, tb);
            assertArrayEquals(out.toFloatArray(), ta.toFloatArray(), "in place");
        }
    }

    @Test
    void binaryRejectsShapesThatDoNotBroadcast() {
        try (Tensor a = dev.allocate(DType.F32, 4, 3); Tensor b = dev.allocate(DType.F32, 4)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> be.binary(BinaryOp.ADD, a, a, b));
            assertEquals(true, e.getMessage().contains("last dimension"), e.getMessage());
        }
    }

    static Stream<Arguments> reduceCases() {
        List<Arguments> out = new ArrayList<>();
        for (ReduceOp op : ReduceOp.values()) {
            Shapes.rowsCols().forEach(a -> out.add(Arguments.of(op, a.get()[0], a.get()[1])));
        }
        return out.stream();
    }

    @ParameterizedTest(name = "{0} {1}x{2}")
    @MethodSource("reduceCases")
    void reduceRowsMatchesReference(ReduceOp op, int rows, int cols) {
        float[] x = Check.uniform(6, rows * cols);
        try (Tensor tx = dev.fromFloats(x, rows, cols); Tensor out = dev.allocate(DType.F32, rows)) {
            be.reduceRows(op, out, tx);
            Check.close(op.name(), Reference.reduceRows(op, widen(x), rows, cols), out.toFloatArray(), 1e-6);
        }
    }

    @ParameterizedTest(name = "{0}x{1}")
    @MethodSource("org.kindling.ops.Shapes#rowsCols")
    void columnSumsAccumulate(int rows, int cols) {
        float[] x = Check.uniform(9, rows * cols);
        float[] prior = Check.uniform(10, cols);
        try (Tensor tx = dev.fromFloats(x, rows, cols); Tensor out = dev.fromFloats(prior, cols)) {
            be.addColumnSums(out, tx);
            // An fp32 sum of N terms: tolerance grows as √N.
            Check.close("column sums", Check.plus(Reference.columnSums(widen(x), rows, cols), prior), out.toFloatArray(),
                    2e-6 * Math.sqrt(rows), 1e-6);
        }
    }

    @Test
    void sumOfSquaresAndGlobalNorm() {
        float[] a = Check.uniform(7, 97 * 1025);
        float[] b = Check.uniform(8, 59);
        try (Tensor ta = dev.fromFloats(a, a.length); Tensor tb = dev.fromFloats(b, b.length)) {
            double want = Reference.sumOfSquares(widen(a));
            // Lanes sum at most 16 squares in fp32 before the double total: relative error <= 16·2^-24 (1e-6), against
            // ~n·2^-24 for a plain fp32 running sum of the same n = 99,425 squares.
            assertEquals(want, be.sumOfSquares(ta), want * 1e-6);
            double norm = Math.sqrt(want + Reference.sumOfSquares(widen(b)));
            assertEquals(norm, be.globalL2Norm(List.of(ta, tb)), norm * 1e-6);
        }
    }
}
