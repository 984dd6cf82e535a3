package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.kindling.ops.cpu.CpuDevice;

/** Same inputs and thread count → bit-identical outputs, for every kernel, on fresh devices. */
class DeterminismTest {

    /** Runs every kernel once on sizes large enough to split across threads; returns all outputs. */
    private static List<float[]> runAll(int threads) {
        int rows = 300;
        int cols = 257;
        int n = rows * cols;
        int vocab = 301;
        List<float[]> out = new ArrayList<>();
        try (Device dev = CpuDevice.open(threads)) {
            Backend be = dev.backend();
            try (Tensor x = dev.fromFloats(Check.uniform(1, n), rows, cols);
                 Tensor dy = dev.fromFloats(Check.uniform(2, n), rows, cols);
                 Tensor w = dev.fromFloats(Check.uniform(3, cols), cols);
                 Tensor b = dev.fromFloats(Check.uniform(4, cols), cols);
                 Tensor y = dev.allocate(DType.F32, rows, cols);
                 Tensor dx = dev.allocate(DType.F32, rows, cols);
                 Tensor dw = dev.allocate(DType.F32, cols);
                 Tensor db = dev.allocate(DType.F32, cols);
                 Tensor mean = dev.allocate(DType.F32, rows);
                 Tensor rstd = dev.allocate(DType.F32, rows);
                 Tensor sq = dev.fromFloats(Check.uniform(5, cols * cols), cols, cols);
                 Tensor prod = dev.allocate(DType.F32, rows, cols);
                 Tensor ids = dev.fromInts(Check.ints(6, rows, vocab), rows);
                 Tensor table = dev.fromFloats(Check.uniform(7, vocab * cols), vocab, cols);
                 Tensor dtable = dev.allocate(DType.F32, vocab, cols);
                 Tensor logits = dev.fromFloats(Check.uniform(8, rows * vocab, -5, 5), rows, vocab);
                 Tensor dlogits = dev.allocate(DType.F32, rows, vocab);
                 Tensor losses = dev.allocate(DType.F32, rows);
                 Tensor targets = dev.fromInts(Check.ints(9, rows, vocab), rows);
                 Tensor m = dev.allocate(DType.F32, n);
                 Tensor v = dev.allocate(DType.F32, n);
                 Tensor red = dev.allocate(DType.F32, rows)) {
                be.gemm(Gemm.of(false, true, rows, cols, cols), prod, x, sq);
                out.add(prod.toFloatArray());
                be.layerNormForward(y, mean, rstd, x, w, b, 1e-5f);
                be.layerNormBackward(dx, dw, db, dy, x, w, mean, rstd);
                out.add(y.toFloatArray());
                out.add(dx.toFloatArray());
                out.add(dw.toFloatArray());
                out.add(db.toFloatArray());
                be.rmsNormForward(y, rstd, x, w, 1e-6f);
                be.rmsNormBackward(dx, dw, dy, x, w, rstd);
                out.add(y.toFloatArray());
                out.add(dx.toFloatArray());
                out.add(dw.toFloatArray());
                be.softmaxForward(y, x);
                be.softmaxBackward(dx, dy, y);
                out.add(y.toFloatArray());
                out.add(dx.toFloatArray());
                be.geluForward(y, x);
                be.geluBackward(dx, dy, x);
                out.add(y.toFloatArray());
                out.add(dx.toFloatArray());
                be.embeddingForward(y, ids, table);
                be.embeddingBackward(dtable, dy, ids);
                out.add(y.toFloatArray());
                out.add(dtable.toFloatArray());
                be.crossEntropyForwardBackward(losses, dlogits, logits, targets, -1, 0.01f);
                out.add(losses.toFloatArray());
                out.add(dlogits.toFloatArray());
                for (ReduceOp op : ReduceOp.values()) {
                    be.reduceRows(op, red, x);
                    out.add(red.toFloatArray());
                }
                Tensor flat = x.reshape(n);
                be.adamW(flat, dy.reshape(n), m, v, new AdamW(1e-2f, 0.9f, 0.99f, 1e-8f, 0.1f, 3, 0.7f));
                out.add(flat.toFloatArray());
                out.add(new float[] {(float) be.sumOfSquares(dy), (float) be.globalL2Norm(List.of(dy, w))});
            }
        }
        return out;
    }

    @Test
    void sameThreadCountGivesBitIdenticalResults() {
        for (int threads : new int[] {1, 2, 3}) {
            List<float[]> first = runAll(threads);
            List<float[]> second = runAll(threads);
            assertEquals(first.size(), second.size());
            for (int i = 0; i < first.size(); i++) {
                assertArrayEquals(first.get(i), second.get(i), "output " + i + " with " + threads + " threads");
            }
        }
    }

    @Test
    void reductionsDoNotDependOnTheThreadCount() {
        float[] x = Check.uniform(10, 1 << 20);
        double[] sums = new double[3];
        for (int t = 1; t <= 3; t++) {
            try (Device dev = CpuDevice.open(t); Tensor tx = dev.fromFloats(x, x.length)) {
                sums[t - 1] = dev.backend().sumOfSquares(tx);
            }
        }
        assertEquals(sums[0], sums[1], 0.0);
        assertEquals(sums[0], sums[2], 0.0);
    }
}
