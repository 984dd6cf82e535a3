package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.kindling.ops.Reference.widen;

import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;
import org.junit.jupiter.params.provider.ValueSource;
import org.kindling.ops.cpu.CpuDevice;

/**
 * Softmax, normalizations, GELU, embeddings, cross-entropy and AdamW against {@link Reference}.
 * Every backward kernel is checked to accumulate: gradients start from random values and must end
 * at start + reference. Tolerances (absolute and relative) are stated per kernel, sized to fp32
 * rounding of a C-term reduction.
 */
class NeuralKernelTest {
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

    @ParameterizedTest(name = "{0}x{1}")
    @MethodSource("org.kindling.ops.Shapes#rowsCols")
    void softmaxForwardAndBackward(int rows, int cols) {
        float[] x = Check.uniform(11, rows * cols, -6, 6);
        float[] dy = Check.uniform(12, rows * cols);
        float[] prior = Check.uniform(13, rows * cols);
        try (Tensor tx = dev.fromFloats(x, rows, cols); Tensor y = dev.allocate(DType.F32, rows, cols);
             Tensor tdy = dev.fromFloats(dy, rows, cols); Tensor dx = dev.fromFloats(prior, rows, cols)) {
            be.softmaxForward(y, tx);
            Check.close("softmax", Reference.softmax(widen(x), rows, cols), y.toFloatArray(), 1e-7, 1e-5);
            be.softmaxBackward(dx, tdy, y);
            Check.close("softmax dx", Check.plus(Reference.softmaxBackward(widen(dy), widen(x), rows, cols), prior),
                    dx.toFloatArray(), 1e-6, 1e-5);
        }
    }

    @ParameterizedTest(name = "{0}x{1}")
    @MethodSource("org.kindling.ops.Shapes#rowsCols")
    void layerNormForwardAndBackward(int rows, int cols) {
        int n = rows * cols;
        float[] x = Check.uniform(21, n, -3, 5);
        float[] w = Check.uniform(22, cols, 0.5, 1.5);
        float[] b = Check.uniform(23, cols);
        float[] dy = Check.uniform(24, n);
        float[] prior = Check.uniform(25, n);
        float[] priorW = Check.uniform(26, cols);
        float[] priorB = Check.uniform(27, cols);
        float eps = 1e-5f;
        try (Tensor tx = dev.fromFloats(x, rows, cols); Tensor tw = dev.fromFloats(w, cols);
             Tensor tb = dev.fromFloats(b, cols); Tensor out = dev.allocate(DType.F32, rows, cols);
             Tensor mean = dev.allocate(DType.F32, rows); Tensor rstd = dev.allocate(DType.F32, rows);
             Tensor tdy = dev.fromFloats(dy, rows, cols); Tensor dx = dev.fromFloats(prior, rows, cols);
             Tensor dw = dev.fromFloats(priorW, cols); Tensor db = dev.fromFloats(priorB, cols)) {
            be.layerNormForward(out, mean, rstd, tx, tw, tb, eps);
            double[][] ref = Reference.layerNorm(widen(x), widen(w), widen(b), rows, cols, eps);
            Check.close("layerNorm out", ref[0], out.toFloatArray(), 1e-5, 1e-5);
            Check.close("layerNorm mean", ref[1], mean.toFloatArray(), 1e-6, 1e-6);
            Check.close("layerNorm rstd", ref[2], rstd.toFloatArray(), 1e-5, 1e-5);
            be.layerNormBackward(dx, dw, db, tdy, tx, tw, mean, rstd);
            double[][] g = Reference.layerNormBackward(widen(dy), widen(x), widen(w), rows, cols, eps);
            double gtol = cols == 1 ? 2e-2 : 1e-4; // C = 1: rstd = 1/√eps amplifies rounding
            Check.close("layerNorm dx", Check.plus(g[0], prior), dx.toFloatArray(), gtol, 1e-4);
            Check.close("layerNorm dweight", Check.plus(g[1], priorW), dw.toFloatArray(), 1e-4 * Math.sqrt(rows), 1e-4);
            Check.close("layerNorm dbias", Check.plus(g[2], priorB), db.toFloatArray(), 1e-5 * Math.sqrt(rows), 1e-5);
        }
    }

    @ParameterizedTest(name = "{0}x{1}")
    @MethodSource("org.kindling.ops.Shapes#rowsCols")
    void rmsNormForwardAndBackward(int rows, int cols) {
        int n = rows * cols;
        float[] x = Check.uniform(31, n, -3, 3);
        float[] w = Check.uniform(32, cols, 0.5, 1.5);
        float[] dy = Check.uniform(33, n);
        float[] prior = Check.uniform(34, n);
        float[] priorW = Check.uniform(35, cols);
        float eps = 1e-6f;
        try (Tensor tx = dev.fromFloats(x, rows, cols); Tensor tw = dev.fromFloats(w, cols);
             Tensor out = dev.allocate(DType.F32, rows, cols); Tensor rstd = dev.allocate(DType.F32, rows);
             Tensor tdy = dev.fromFloats(dy, rows, cols); Tensor dx = dev.fromFloats(prior, rows, cols);
             Tensor dw = dev.fromFloats(priorW, cols)) {
            be.rmsNormForward(out, rstd, tx, tw, eps);
            double[][] ref = Reference.rmsNorm(widen(x), widen(w), rows, cols, eps);
            Check.close("rmsNorm out", ref[0], out.toFloatArray(), 1e-5, 1e-5);
            Check.close("rmsNorm rstd", ref[1], rstd.toFloatArray(), 1e-5, 1e-5);
            be.rmsNormBackward(dx, dw, tdy, tx, tw, rstd);
            double[][] g = Reference.rmsNormBackward(widen(dy), widen(x), widen(w), rows, cols, eps);
            Check.close("rmsNorm dx", Check.plus(g[0], prior), dx.toFloatArray(), 1e-4, 1e-4);
            Check.close("rmsNorm dweight", Check.plus(g[1], priorW), dw.toFloatArray(), 1e-4 * Math.sqrt(rows), 1e-4);
        }
    }

    @ParameterizedTest(name = "n={0}")
    @ValueSource(ints = {1, 7, 59, 97, 1025, 97 * 1025})
    void geluForwardAndBackward(int n) {
        float[] x = Check.uniform(41, n, -6, 6);
        float[] dy = Check.uniform(42, n);
        float[] prior = Check.uniform(43, n);
        try (Tensor tx = dev.fromFloats(x, n); Tensor out = dev.allocate(DType.F32, n);
             Tensor tdy = dev.fromFloats(dy, n); Tensor dx = dev.fromFloats(prior, n)) {
            be.geluForward(out, tx);
            Check.close("gelu", Reference.gelu(widen(x)), out.toFloatArray(), 1e-6, 1e-6);
            be.geluBackward(dx, tdy, tx);
            Check.close("gelu dx", Check.plus(Reference.geluBackward(widen(dy), widen(x)), prior), dx.toFloatArray(), 1e-6, 1e-5);
        }
    }

    @ParameterizedTest(name = "{0}x{1}")
    @MethodSource("org.kindling.ops.Shapes#rowsCols")
    void embeddingGatherAndScatterAdd(int tokens, int cols) {
        int vocab = 59;
        float[] table = Check.uniform(51, vocab * cols);
        int[] ids = Check.ints(52, tokens, vocab);
        float[] dout = Check.uniform(53, tokens * cols);
        float[] prior = Check.uniform(54, vocab * cols);
        try (Tensor tt = dev.fromFloats(table, vocab, cols); Tensor tids = dev.fromInts(ids, tokens);
             Tensor out = dev.allocate(DType.F32, tokens, cols); Tensor tdout = dev.fromFloats(dout, tokens, cols);
             Tensor dt = dev.fromFloats(prior, vocab, cols)) {
            be.embeddingForward(out, tids, tt);
            Check.close("embedding", Reference.embedding(ids, widen(table), cols), out.toFloatArray(), 0, 0);
            be.embeddingBackward(dt, tdout, tids);
            Check.close("embedding dtable", Check.plus(Reference.embeddingBackward(widen(dout), ids, vocab, cols), prior),
                    dt.toFloatArray(), 1e-5, 1e-5);
        }
    }

    @Test
    void embeddingRejectsOutOfRangeIds() {
        try (Tensor table = dev.allocate(DType.F32, 5, 3); Tensor ids = dev.fromInts(new int[] {0, 5}, 2);
             Tensor out = dev.allocate(DType.F32, 2, 3)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> be.embeddingForward(out, ids, table));
            assertTrue(e.getMessage().contains("ids[1] = 5"), e.getMessage());
        }
    }

    @ParameterizedTest(name = "{0}x{1}")
    @MethodSource("org.kindling.ops.Shapes#rowsCols")
    void crossEntropyForwardAndFusedBackward(int rows, int vocab) {
        float[] logits = Check.uniform(61, rows * vocab, -8, 8);
        int[] targets = Check.ints(62, rows, vocab);
        int ignore = -100;
        for (int r = 0; r < rows; r += 3) {
            targets[r] = ignore;
        }
        float scale = 1f / rows;
        try (Tensor tl = dev.fromFloats(logits, rows, vocab); Tensor tt = dev.fromInts(targets, rows);
             Tensor losses = dev.allocate(DType.F32, rows); Tensor dl = dev.fromFloats(Check.uniform(63, rows * vocab), rows, vocab)) {
            double[] wantLoss = Reference.crossEntropy(widen(logits), targets, rows, vocab, ignore);
            double[] wantGrad = Reference.crossEntropyBackward(widen(logits), targets, rows, vocab, ignore, scale);
            be.crossEntropyForward(losses, tl, tt, ignore);
            Check.close("loss", wantLoss, losses.toFloatArray(), 1e-5, 1e-5);
            be.fill(losses, 7f);
            be.crossEntropyForwardBackward(losses, dl, tl, tt, ignore, scale);
            Check.close("loss (fused)", wantLoss, losses.toFloatArray(), 1e-5, 1e-5);
            Check.close("dlogits", wantGrad, dl.toFloatArray(), 1e-7, 1e-5);
            // In place: dlogits overwrite the logits.
            be.crossEntropyForwardBackward(losses, tl, tl, tt, ignore, scale);
            Check.close("dlogits in place", wantGrad, tl.toFloatArray(), 1e-7, 1e-5);
        }
    }

    @Test
    void crossEntropyNamesTheBadTarget() {
        try (Tensor logits = dev.allocate(DType.F32, 3, 4); Tensor targets = dev.fromInts(new int[] {0, 3, 4}, 3);
             Tensor losses = dev.allocate(DType.F32, 3)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> be.crossEntropyForward(losses, logits, targets, -1));
            assertTrue(e.getMessage().contains("targets[2] = 4"), e.getMessage());
        }
    }

    @Test
    void crossEntropyIsStableForHugeLogits() {
        try (Tensor logits = dev.fromFloats(new float[] {1e30f, -1e30f, 0f, 80f, 90f, 100f}, 2, 3);
             Tensor targets = dev.fromInts(new int[] {0, 1}, 2); Tensor losses = dev.allocate(DType.F32, 2)) {
            be.crossEntropyForward(losses, logits, targets, -1);
            float[] l = losses.toFloatArray();
            assertEquals(0f, l[0], 0f);
            assertEquals(10f, l[1], 1e-3f);
        }
    }

    @ParameterizedTest(name = "n={0}")
    @ValueSource(ints = {1, 7, 59, 97, 1025, 97 * 1025})
    void dropoutMatchesReferenceAndBackwardUsesTheSameMask(int n) {
        float p = 0.3f;
        float[] x = Check.uniform(81, n);
        float[] dy = Check.uniform(82, n);
        float[] prior = Check.uniform(83, n);
        try (Tensor tx = dev.fromFloats(x, n); Tensor out = dev.allocate(DType.F32, n); Tensor tdy = dev.fromFloats(dy, n);
             Tensor dx = dev.fromFloats(prior, n)) {
            be.dropoutForward(out, tx, p, 1234);
            Check.close("dropout", Reference.dropout(widen(x), p, 1234), out.toFloatArray(), 1e-7, 1e-6);
            be.dropoutBackward(dx, tdy, p, 1234);
            Check.close("dropout dx", Check.plus(Reference.dropout(widen(dy), p, 1234), prior), dx.toFloatArray(), 1e-6, 1e-6);
            be.dropoutForward(tx, tx, 0f, 99);
            assertArrayEquals(x, tx.toFloatArray(), "p = 0 keeps everything");
        }
    }

    @Test
    void dropoutKeepsTheExpectedFractionAndDependsOnTheSeed() {
        int n = 200_000;
        int kept = 0;
        int differ = 0;
        for (int i = 0; i < n; i++) {
            boolean a = DropoutMask.keeps(5, i, 0.1f);
            kept += a ? 1 : 0;
            differ += a != DropoutMask.keeps(6, i, 0.1f) ? 1 : 0;
        }
        assertEquals(0.9, kept / (double) n, 0.005);
        assertTrue(differ > n / 10, "another seed draws another mask");
        assertThrows(IllegalArgumentException.class, () -> {
            try (Tensor t = dev.allocate(DType.F32, 4)) {
                be.dropoutForward(t, t, 1f, 0);
            }
        });
    }

    @ParameterizedTest(name = "n={0}")
    @ValueSource(ints = {1, 7, 59, 97, 1025, 97 * 1025})
    void adamWMatchesReference(int n) {
        float[] p = Check.uniform(71, n);
        float[] g = Check.uniform(72, n);
        float[] m = Check.uniform(73, n, -0.1, 0.1);
        float[] v = Check.uniform(74, n, 0, 0.01);
        AdamW step = new AdamW(3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 7, 0.5f);
        try (Tensor tp = dev.fromFloats(p, n); Tensor tg = dev.fromFloats(g, n); Tensor tm = dev.fromFloats(m, n);
             Tensor tv = dev.fromFloats(v, n)) {
            be.adamW(tp, tg, tm, tv, step);
            double[][] ref = Reference.adamW(widen(p), widen(g), widen(m), widen(v), step);
            Check.close("adamW params", ref[0], tp.toFloatArray(), 1e-6, 1e-5);
            Check.close("adamW m", ref[1], tm.toFloatArray(), 1e-7, 1e-5);
            Check.close("adamW v", ref[2], tv.toFloatArray(), 1e-9, 1e-5);
            assertArrayEquals(g, tg.toFloatArray(), "gradients are left as they were");
        }
    }

    @Test
    void adamWFirstStepMovesEachWeightByLr() {
        // At step 1 the bias-corrected update is g/|g| (± eps): every weight moves by lr against its gradient.
        try (Tensor p = dev.fromFloats(new float[] {1, 1, 1}, 3); Tensor g = dev.fromFloats(new float[] {2, -0.5f, 1e-3f}, 3);
             Tensor m = dev.allocate(DType.F32, 3); Tensor v = dev.allocate(DType.F32, 3)) {
            be.adamW(p, g, m, v, new AdamW(0.1f, 0.9f, 0.999f, 1e-8f, 0f, 1, 1f));
            float[] got = p.toFloatArray();
            assertEquals(0.9f, got[0], 1e-6f);
            assertEquals(1.1f, got[1], 1e-6f);
            assertEquals(0.9f, got[2], 1e-4f);
        }
    }

    @Test
    void adamWValidatesHyperparameters() {
        assertThrows(IllegalArgumentException.class, () -> new AdamW(1e-3f, 1f, 0.999f, 1e-8f, 0f, 1, 1f));
        assertThrows(IllegalArgumentException.class, () -> new AdamW(1e-3f, 0.9f, 0.999f, 1e-8f, 0f, 0, 1f));
        assertThrows(IllegalArgumentException.class, () -> new AdamW(Float.NaN, 0.9f, 0.999f, 1e-8f, 0f, 1, 1f));
        assertThrows(IllegalArgumentException.class, () -> new AdamW(1e-3f, 0.9f, 0.999f, 0f, 0f, 1, 1f));
    }
}
