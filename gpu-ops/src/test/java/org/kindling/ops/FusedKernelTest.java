package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;
import org.kindling.ops.cpu.CpuDevice;
import org.kindling.ops.reference.ReferenceDevice;

/**
 * The fused training kernels (bias + GELU, GELU backward + bias gradient, residual add +
 * LayerNorm, LayerNorm backward + residual gradient). Each is run three ways on the same fp32
 * inputs: the CPU backend's fused loop, the naive fp32 composition of the existing kernels on the
 * CPU, and the fp64 reference backend's fused twin. The fused error against fp64 must stay within
 * 2× (outputs) or 3× (gradients) the naive composition's error, so fusing never costs accuracy;
 * the reference twin must equal the reference backend's own composition.
 */
class FusedKernelTest {
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

    private static double[] host(Tensor t) {
        double[] d = new double[t.numel()];
        t.device().backend().copyToHost(d, t);
        return d;
    }

    private static double maxError(double[] want, double[] got) {
        double e = 0;
        for (int i = 0; i < want.length; i++) {
            e = Math.max(e, Math.abs(want[i] - got[i]));
        }
        return e;
    }

    /**
     * Fails unless fused's max error against want is at most factor × naive's. A floor of one
     * float ulp of want's largest magnitude covers outputs both compute exactly (a 1-column LayerNorm).
     */
    private static void noWorse(String what, double[] want, Tensor fused, Tensor naive, double factor) {
        double[] f = host(fused);
        double[] n = host(naive);
        double scale = 0;
        for (double v : want) {
            scale = Math.max(scale, Math.abs(v));
        }
        double ef = maxError(want, f);
        double en = maxError(want, n);
        assertTrue(ef <= factor * en + Math.ulp((float) scale),
                what + ": fused error " + ef + " > " + factor + "× naive error " + en);
    }

    private static void sameAsComposition(String what, Tensor fused, Tensor composed) {
        double[] f = host(fused);
        double[] c = host(composed);
        for (int i = 0; i < f.length; i++) {
            assertTrue(Math.abs(f[i] - c[i]) <= 1e-12 * (1 + Math.abs(c[i])),
                    what + ": reference twin " + f[i] + " vs composition " + c[i] + " at " + i);
        }
    }

    @ParameterizedTest(name = "{0}x{1}")
    @MethodSource("org.kindling.ops.Shapes#rowsCols")
    void addLayerNormForward(int rows, int cols) {
        int n = rows * cols;
        float[] a = Check.uniform(31, n, -3, 5);
        float[] b = Check.uniform(32, n, -2, 2);
        float[] w = Check.uniform(33, cols, 0.5, 1.5);
        float[] bias = Check.uniform(34, cols);
        float eps = 1e-5f;
        Tensor[][] r = new Tensor[3][];
        Device[] devs = {cpu, cpu, ref};
        for (int k = 0; k < 3; k++) {
            Device d = devs[k];
            r[k] = new Tensor[] {d.allocate(DType.F32, rows, cols), d.allocate(DType.F32, rows, cols),
                d.allocate(DType.F32, rows), d.allocate(DType.F32, rows), d.fromFloats(a, rows, cols),
                d.fromFloats(b, rows, cols), d.fromFloats(w, cols), d.fromFloats(bias, cols)};
        }
        try (Tensor refSum = ref.allocate(DType.F32, rows, cols); Tensor refOut = ref.allocate(DType.F32, rows, cols);
             Tensor refMean = ref.allocate(DType.F32, rows); Tensor refRstd = ref.allocate(DType.F32, rows)) {
            Tensor[] fused = r[0];
            Tensor[] naive = r[1];
            Tensor[] twin = r[2];
            cpu.backend().addLayerNormForward(fused[0], fused[1], fused[2], fused[3], fused[4], fused[5], fused[6], fused[7],
                    eps);
            cpu.backend().binary(BinaryOp.ADD, naive[0], naive[4], naive[5]);
            cpu.backend().layerNormForward(naive[1], naive[2], naive[3], naive[0], naive[6], naive[7], eps);
            ref.backend().addLayerNormForward(twin[0], twin[1], twin[2], twin[3], twin[4], twin[5], twin[6], twin[7], eps);
            ref.backend().binary(BinaryOp.ADD, refSum, twin[4], twin[5]);
            ref.backend().layerNormForward(refOut, refMean, refRstd, refSum, twin[6], twin[7], eps);
            String[] names = {"sum", "out", "mean", "rstd"};
            Tensor[] composed = {refSum, refOut, refMean, refRstd};
            for (int i = 0; i < 4; i++) {
                sameAsComposition("addLayerNorm " + names[i], twin[i], composed[i]);
                noWorse("addLayerNorm " + names[i], host(twin[i]), fused[i], naive[i], 2);
            }
        } finally {
            closeAll(r);
        }
    }

    @ParameterizedTest(name = "{0}x{1}")
    @MethodSource("org.kindling.ops.Shapes#rowsCols")
    void layerNormBackwardAdd(int rows, int cols) {
        int n = rows * cols;
        float[] x = Check.uniform(41, n, -3, 5);
        float[] w = Check.uniform(42, cols, 0.5, 1.5);
        float[] dy = Check.uniform(43, n);
        float[] dres = Check.uniform(44, n);
        float[] prior = Check.uniform(45, n);
        float[] priorW = Check.uniform(46, cols);
        float[] priorB = Check.uniform(47, cols);
        Tensor[][] r = new Tensor[3][];
        Device[] devs = {cpu, cpu, ref};
        for (int k = 0; k < 3; k++) {
            Device d = devs[k];
            Tensor tx = d.fromFloats(x, rows, cols);
            Tensor tw = d.fromFloats(w, cols);
            Tensor mean = d.allocate(DType.F32, rows);
            Tensor rstd = d.allocate(DType.F32, rows);
            try (Tensor out = d.allocate(DType.F32, rows, cols); Tensor zero = d.fromFloats(new float[cols], cols)) {
                // Statistics from the device's own forward, as training passes them.
                d.backend().layerNormForward(out, mean, rstd, tx, tw, zero, 1e-5f);
            }
            r[k] = new Tensor[] {d.fromFloats(prior, rows, cols), d.fromFloats(priorW, cols), d.fromFloats(priorB, cols),
                d.fromFloats(dy, rows, cols), d.fromFloats(dres, rows, cols), tx, tw, mean, rstd};
        }
        try (Tensor cdx = ref.fromFloats(prior, rows, cols); Tensor cdw = ref.fromFloats(priorW, cols);
             Tensor cdb = ref.fromFloats(priorB, cols)) {
            Tensor[] f = r[0];
            Tensor[] nv = r[1];
            Tensor[] t = r[2];
            cpu.backend().layerNormBackwardAdd(f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8]);
            cpu.backend().layerNormBackward(nv[0], nv[1], nv[2], nv[3], nv[5], nv[6], nv[7], nv[8]);
            cpu.backend().binary(BinaryOp.ADD, nv[0], nv[0], nv[4]);
            ref.backend().layerNormBackwardAdd(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8]);
            ref.backend().layerNormBackward(cdx, cdw, cdb, t[3], t[5], t[6], t[7], t[8]);
            ref.backend().binary(BinaryOp.ADD, cdx, cdx, t[4]);
            String[] names = {"dx", "dweight", "dbias"};
            Tensor[] composed = {cdx, cdw, cdb};
            for (int i = 0; i < 3; i++) {
                sameAsComposition("layerNormBackwardAdd " + names[i], t[i], composed[i]);
                noWorse("layerNormBackwardAdd " + names[i], host(t[i]), f[i], nv[i], 3);
            }
        } finally {
            closeAll(r);
        }
    }

    @ParameterizedTest(name = "{0}x{1}")
    @MethodSource("org.kindling.ops.Shapes#rowsCols")
    void biasGeluForward(int rows, int cols) {
        int n = rows * cols;
        float[] h = Check.uniform(51, n, -5, 5);
        float[] bias = Check.uniform(52, cols);
        Tensor[][] r = new Tensor[3][];
        Device[] devs = {cpu, cpu, ref};
        for (int k = 0; k < 3; k++) {
            Device d = devs[k];
            r[k] = new Tensor[] {d.allocate(DType.F32, rows, cols), d.fromFloats(h, rows, cols), d.fromFloats(bias, cols),
                d.allocate(DType.F32, rows, cols)};
        }
        try (Tensor ch = ref.fromFloats(h, rows, cols); Tensor cout = ref.allocate(DType.F32, rows, cols)) {
            Tensor[] f = r[0];
            Tensor[] nv = r[1];
            Tensor[] t = r[2];
            cpu.backend().biasGeluForward(f[0], f[3], f[1], f[2]);
            cpu.backend().binary(BinaryOp.ADD, nv[1], nv[1], nv[2]);
            cpu.backend().geluForward(nv[0], nv[1]);
            ref.backend().biasGeluForward(t[0], t[3], t[1], t[2]);
            ref.backend().binary(BinaryOp.ADD, ch, ch, t[2]);
            ref.backend().geluForward(cout, ch);
            sameAsComposition("biasGelu h", t[1], ch);
            sameAsComposition("biasGelu out", t[0], cout);
            noWorse("biasGelu h", host(t[1]), f[1], nv[1], 2);
            noWorse("biasGelu out", host(t[0]), f[0], nv[0], 2);
            // The kept intermediate: exp(2u) of h + bias, relative to its size (it spans many decades).
            double[] want = host(t[3]);
            double[] got = host(f[3]);
            for (int i = 0; i < want.length; i++) {
                assertTrue(Math.abs(got[i] - want[i]) <= 1e-5 * want[i] || Double.isInfinite(want[i]) && Double.isInfinite(got[i]),
                        "biasGelu tanhExp " + got[i] + " vs " + want[i] + " at " + i);
            }
        } finally {
            closeAll(r);
        }
    }

    @ParameterizedTest(name = "{0}x{1}")
    @MethodSource("org.kindling.ops.Shapes#rowsCols")
    void geluBackwardBias(int rows, int cols) {
        int n = rows * cols;
        float[] x = Check.uniform(61, n, -5, 5);
        float[] dy = Check.uniform(62, n);
        float[] stale = Check.uniform(63, n);
        float[] priorB = Check.uniform(64, cols);
        Tensor[][] r = new Tensor[3][];
        Device[] devs = {cpu, cpu, ref};
        for (int k = 0; k < 3; k++) {
            Device d = devs[k];
            // dx starts stale: the kernel writes it, and must not add to what was there.
            r[k] = new Tensor[] {d.fromFloats(stale, rows, cols), d.fromFloats(priorB, cols), d.fromFloats(dy, rows, cols),
                d.allocate(DType.F32, rows, cols), d.allocate(DType.F32, rows, cols)};
            // x and its kept exp(2u) come from the device's own forward (zero bias), as in training.
            try (Tensor zero = d.fromFloats(new float[cols], cols); Tensor out = d.allocate(DType.F32, rows, cols)) {
                d.backend().copyFromHost(r[k][3], x);
                d.backend().biasGeluForward(out, r[k][4], r[k][3], zero);
            }
        }
        try (Tensor cdx = ref.fromFloats(new float[n], rows, cols); Tensor cdb = ref.fromFloats(priorB, cols)) {
            Tensor[] f = r[0];
            Tensor[] nv = r[1];
            Tensor[] t = r[2];
            cpu.backend().geluBackwardBias(f[0], f[1], f[2], f[3], f[4]);
            cpu.backend().fill(nv[0], 0f);
            cpu.backend().geluBackward(nv[0], nv[2], nv[3]);
            cpu.backend().addColumnSums(nv[1], nv[0]);
            ref.backend().geluBackwardBias(t[0], t[1], t[2], t[3], t[4]);
            ref.backend().geluBackward(cdx, t[2], t[3]);
            ref.backend().addColumnSums(cdb, cdx);
            sameAsComposition("geluBackwardBias dx", t[0], cdx);
            sameAsComposition("geluBackwardBias dbias", t[1], cdb);
            noWorse("geluBackwardBias dx", host(t[0]), f[0], nv[0], 3);
            noWorse("geluBackwardBias dbias", host(t[1]), f[1], nv[1], 3);
        } finally {
            closeAll(r);
        }
    }

    @ParameterizedTest(name = "{0}x{1}")
    @MethodSource("org.kindling.ops.Shapes#rowsCols")
    void biasDropoutAddForward(int rows, int cols) {
        int n = rows * cols;
        float[] x = Check.uniform(81, n, -3, 3);
        float[] bias = Check.uniform(82, cols);
        float[] res = Check.uniform(83, n, -2, 2);
        long seed = 0x5eedL;
        for (float p : new float[] {0f, 0.3f}) {
            Tensor[][] r = new Tensor[3][];
            Device[] devs = {cpu, cpu, ref};
            for (int k = 0; k < 3; k++) {
                Device d = devs[k];
                r[k] = new Tensor[] {d.allocate(DType.F32, rows, cols), d.fromFloats(x, rows, cols), d.fromFloats(bias, cols),
                    d.fromFloats(res, rows, cols)};
            }
            try (Tensor cout = ref.allocate(DType.F32, rows, cols)) {
                Tensor[] f = r[0];
                Tensor[] nv = r[1];
                Tensor[] t = r[2];
                cpu.backend().biasDropoutAddForward(f[0], f[1], f[2], f[3], p, seed);
                cpu.backend().binary(BinaryOp.ADD, nv[0], nv[1], nv[2]);
                if (p > 0) {
                    cpu.backend().dropoutForward(nv[0], nv[0], p, seed);
                }
                cpu.backend().binary(BinaryOp.ADD, nv[0], nv[0], nv[3]);
                ref.backend().biasDropoutAddForward(t[0], t[1], t[2], t[3], p, seed);
                ref.backend().binary(BinaryOp.ADD, cout, t[1], t[2]);
                ref.backend().dropoutForward(cout, cout, p, seed);
                ref.backend().binary(BinaryOp.ADD, cout, cout, t[3]);
                sameAsComposition("biasDropoutAdd p=" + p, t[0], cout);
                noWorse("biasDropoutAdd p=" + p, host(t[0]), f[0], nv[0], 2);
                // In place on x, as the MLP calls it.
                cpu.backend().biasDropoutAddForward(f[1], f[1], f[2], f[3], p, seed);
                assertArrayEquals(f[0].toFloatArray(), f[1].toFloatArray(), "biasDropoutAdd in place, p=" + p);
            } finally {
                closeAll(r);
            }
        }
    }

    /** The bias gradient is summed per column in row order, so it does not depend on the thread count. */
    @Test
    void geluBackwardBiasIsIndependentOfThreads() {
        int rows = 97;
        int cols = 1025;
        float[] x = Check.uniform(71, rows * cols, -5, 5);
        float[] dy = Check.uniform(72, rows * cols);
        float[][] got = new float[2][];
        int[] threads = {1, 3};
        for (int k = 0; k < 2; k++) {
            try (Device d = CpuDevice.open(threads[k]); Tensor dx = d.allocate(DType.F32, rows, cols);
                 Tensor db = d.allocate(DType.F32, cols); Tensor tdy = d.fromFloats(dy, rows, cols);
                 Tensor tx = d.fromFloats(x, rows, cols); Tensor e = d.allocate(DType.F32, rows, cols);
                 Tensor zero = d.fromFloats(new float[cols], cols)) {
                d.backend().biasGeluForward(dx, e, tx, zero);
                d.backend().fill(db, 0f);
                d.backend().geluBackwardBias(dx, db, tdy, tx, e);
                got[k] = db.toFloatArray();
            }
        }
        assertArrayEquals(got[0], got[1]);
    }

    @Test
    void mismatchedOperandsAreNamed() {
        try (Tensor h = cpu.allocate(DType.F32, 4, 8); Tensor out = cpu.allocate(DType.F32, 4, 8);
             Tensor bias = cpu.allocate(DType.F32, 7); Tensor dres = cpu.allocate(DType.F32, 3, 8)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> cpu.backend().biasGeluForward(out, dres, h, bias));
            assertTrue(e.getMessage().contains("tanhExp"), e.getMessage());
            e = assertThrows(IllegalArgumentException.class,
                    () -> cpu.backend().biasGeluForward(out, out, h, bias));
            assertTrue(e.getMessage().contains("bias"), e.getMessage());
            e = assertThrows(IllegalArgumentException.class,
                    () -> cpu.backend().addLayerNormForward(h, out, bias, bias, h, dres, bias, bias, 1e-5f));
            assertTrue(e.getMessage().contains("b "), e.getMessage());
        }
    }

    private static void closeAll(Tensor[][] groups) {
        for (Tensor[] g : groups) {
            if (g != null) {
                for (Tensor t : g) {
                    t.close();
                }
            }
        }
    }
}
