package org.kindling.models;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.Arrays;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;
import org.kindling.models.nn.ButterflyLinear;
import org.kindling.models.nn.Linear;
import org.kindling.models.nn.Params;
import org.kindling.models.nn.PixelflyLinear;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;

/** Butterfly and pixelfly linears: exact cases, initial variance and fp64 gradient checks. */
class StructuredLinearTest {
    private final ReferenceTensors ref = new ReferenceTensors();
    private final Device dev = ref.dev;

    @AfterEach
    void tearDown() throws Exception {
        ref.close();
    }

    private <T extends AutoCloseable> T keep(T t) {
        return ref.keep(t);
    }

    private Tensor input(long seed, int t, int c) {
        return ref.input(seed, t, c);
    }

    private Params randomised(Params.Builder pb, long seed) {
        return ref.params(pb, seed, 0.7);
    }

    private void gradCheck(String what, Params params, Tensor x, Tensor y, Runnable forward,
                           java.util.function.BiConsumer<Tensor, Tensor> backward) {
        ref.check(what, params, x, y, forward, backward);
    }

    @Test
    void identityTwiddlesGiveTheIdentity() {
        Params.Builder pb = new Params.Builder();
        ButterflyLinear bf = keep(new ButterflyLinear(pb, dev, "bf", 8, 8, false, 0.02));
        keep(pb.build(dev, 1));
        bf.setIdentity();
        Tensor x = input(2, 5, 8);
        Tensor y = keep(dev.allocate(DType.F32, 5, 8));
        bf.forward(y, x);
        assertArrayEquals(x.toDoubleArray(), y.toDoubleArray(), 0.0);
    }

    @Test
    void butterflyGradients() {
        // in 6 pads to n = 8; out 11 needs two stacks.
        Params.Builder pb = new Params.Builder();
        ButterflyLinear bf = keep(new ButterflyLinear(pb, dev, "bf", 6, 11, true, 0.3));
        Params params = randomised(pb, 3);
        Tensor x = input(4, 5, 6);
        Tensor y = keep(dev.allocate(DType.F32, 5, 11));
        gradCheck("butterfly", params, x, y, () -> bf.forward(y, x), bf::backward);
    }

    @Test
    void severalTermsGradients() {
        Params.Builder pb = new Params.Builder();
        ButterflyLinear bf = keep(new ButterflyLinear(pb, dev, "bf", 6, 11, true, 0.3, 3));
        Params params = randomised(pb, 5);
        Tensor x = input(6, 5, 6);
        Tensor y = keep(dev.allocate(DType.F32, 5, 11));
        gradCheck("butterfly of 3 terms", params, x, y, () -> bf.forward(y, x), bf::backward);
    }

    @Test
    void termsSumTheirButterflies() {
        // in 5 pads to n = 8, out 11 spans two stacks of 8: each term owns 16 columns of every twiddle row.
        Params.Builder pb = new Params.Builder();
        ButterflyLinear sum = keep(new ButterflyLinear(pb, dev, "sum", 5, 11, false, 0.3, 2));
        randomised(pb, 9);
        Tensor x = input(10, 7, 5);
        Tensor want = keep(dev.allocate(DType.F32, 7, 11));
        double[] total = new double[7 * 11];
        double[] all = sum.twiddles.value().toDoubleArray();
        for (int j = 0; j < 2; j++) {
            Params.Builder one = new Params.Builder();
            ButterflyLinear term = keep(new ButterflyLinear(one, dev, "term", 5, 11, false, 0.3));
            keep(one.build(dev, 1));
            float[] tw = new float[term.factors * 2 * term.width];
            for (int row = 0; row < term.factors * 2; row++) {
                for (int p = 0; p < term.width; p++) {
                    tw[row * term.width + p] = (float) all[row * sum.width + j * sum.termWidth + p];
                }
            }
            term.twiddles.value().copyFrom(tw);
            term.forward(want, x);
            double[] part = want.toDoubleArray();
            for (int i = 0; i < total.length; i++) {
                total[i] += part[i];
            }
        }
        Tensor y = keep(dev.allocate(DType.F32, 7, 11));
        sum.forward(y, x);
        assertArrayEquals(total, y.toDoubleArray(), 1e-5);
        assertEquals(2L * 3 * 2 * 16, pb.trainableCount());
    }

    @ParameterizedTest(name = "{0} terms")
    @ValueSource(ints = {1, 3})
    void butterflyInitialisationKeepsTheDenseOutputVariance(int terms) {
        int in = 64;
        double std = 0.05;
        double dense = in * std * std;
        int t = 256;
        Tensor x = keep(dev.allocate(DType.F32, t, in)).copyFrom(gaussian(8, t * in));
        Tensor y = keep(dev.allocate(DType.F32, t, 128));
        // Products of 6 twiddles have heavy tails, and one draw's outputs share its few twiddles: the
        // mean square over 8 independent draws is within 25 % of the dense layer's.
        int draws = 8;
        double var = 0;
        for (int seed = 1; seed <= draws; seed++) {
            Params.Builder pb = new Params.Builder();
            ButterflyLinear bf = keep(new ButterflyLinear(pb, dev, "bf", in, 128, false, std, terms));
            keep(pb.build(dev, seed));
            bf.forward(y, x);
            var += Arrays.stream(y.toDoubleArray()).map(v -> v * v).average().orElseThrow() / draws;
        }
        assertEquals(dense, var, 0.25 * dense, "butterfly output variance vs dense");
    }

    @Test
    void pixelflyInitialisationKeepsTheDenseOutputVariance() {
        int in = 128;
        double std = 0.05;
        double dense = in * std * std;
        for (boolean gated : new boolean[] {false, true}) {
            Params.Builder pb = new Params.Builder();
            PixelflyLinear px = keep(PixelflyLinear.flatButterfly(pb, dev, "px", in, 256, false, 16, 8, 2, 16, gated, std));
            keep(pb.build(dev, 9));
            int t = 256;
            Tensor x = keep(dev.allocate(DType.F32, t, in)).copyFrom(gaussian(10, t * in));
            Tensor y = keep(dev.allocate(DType.F32, t, 256));
            px.forward(y, x);
            double var = Arrays.stream(y.toDoubleArray()).map(v -> v * v).average().orElseThrow();
            assertEquals(dense, var, 0.15 * dense, "pixelfly output variance vs dense, gated " + gated);
        }
    }

    private static double[] gaussian(long seed, int n) {
        java.util.SplittableRandom r = new java.util.SplittableRandom(seed);
        double[] v = new double[n];
        for (int i = 0; i < n; i++) {
            v[i] = org.kindling.models.nn.Init.gaussian(r);
        }
        return v;
    }

    @Test
    void allOnesLayoutEqualsLinear() {
        int in = 8;
        int out = 12;
        boolean[][] ones = new boolean[3][2];
        for (boolean[] row : ones) {
            Arrays.fill(row, true);
        }
        Params.Builder pb = new Params.Builder();
        PixelflyLinear px = keep(new PixelflyLinear(pb, dev, "px", in, out, true, ones, 4, 0, false, 0.1));
        Params pp = randomised(pb, 11);
        Params.Builder lb = new Params.Builder();
        Linear lin = new Linear(lb, "lin", in, out, true, 0.1);
        Params lp = keep(lb.build(dev, 12));
        // S is stored as its blocks in CSR order; the linear's weight is the same matrix row-major.
        lp.get("lin.weight").value().copyFrom(px.layout().densify(pp.get("px.sparse").value().toDoubleArray()));
        lp.get("lin.bias").value().copyFrom(pp.get("px.bias").value().toDoubleArray());
        Tensor x = input(13, 7, in);
        Tensor y1 = keep(dev.allocate(DType.F32, 7, out));
        Tensor y2 = keep(dev.allocate(DType.F32, 7, out));
        px.forward(y1, x);
        lin.forward(y2, x);
        assertArrayEquals(y2.toDoubleArray(), y1.toDoubleArray(), 1e-12);
        Tensor dy = input(14, 7, out);
        Tensor dx1 = keep(dev.allocate(DType.F32, 7, in));
        Tensor dx2 = keep(dev.allocate(DType.F32, 7, in));
        dev.backend().fill(dx1, 0f);
        dev.backend().fill(dx2, 0f);
        pp.zeroGrad();
        lp.zeroGrad();
        px.backward(dx1, dy);
        lin.backward(dx2, dy);
        assertArrayEquals(dx2.toDoubleArray(), dx1.toDoubleArray(), 1e-12);
        assertArrayEquals(lp.get("lin.weight").grad().toDoubleArray(),
                px.layout().densify(pp.get("px.sparse").grad().toDoubleArray()), 1e-12);
        assertArrayEquals(lp.get("lin.bias").grad().toDoubleArray(), pp.get("px.bias").grad().toDoubleArray(), 1e-12);
    }

    /** A random layout with a low-rank part equals x·(S ⊙ mask + U·V)ᵀ + b computed densely on the host. */
    @Test
    void randomLayoutsEqualTheDensifiedReference() {
        int in = 12;
        int out = 8;
        int block = 4;
        int rank = 2;
        java.util.SplittableRandom r = new java.util.SplittableRandom(19);
        boolean[][] layout = new boolean[out / block][in / block];
        for (boolean[] row : layout) {
            for (int j = 0; j < row.length; j++) {
                row[j] = r.nextBoolean();
            }
        }
        layout[0][0] = true;
        Params.Builder pb = new Params.Builder();
        PixelflyLinear px = keep(new PixelflyLinear(pb, dev, "px", in, out, true, layout, block, rank, false, 0.1));
        Params pp = randomised(pb, 20);
        assertEquals(px.layout().weightNumel(), pp.get("px.sparse").value().numel(), "S holds only the kept blocks");
        double[] s = px.layout().densify(pp.get("px.sparse").value().toDoubleArray());
        double[] u = pp.get("px.low_u.weight").value().toDoubleArray();
        double[] v = pp.get("px.low_v.weight").value().toDoubleArray();
        double[] b = pp.get("px.bias").value().toDoubleArray();
        int t = 5;
        Tensor x = input(21, t, in);
        double[] xv = x.toDoubleArray();
        Tensor y = keep(dev.allocate(DType.F32, t, out));
        px.forward(y, x);
        double[] want = new double[t * out];
        for (int row = 0; row < t; row++) {
            for (int o = 0; o < out; o++) {
                double acc = b[o];
                for (int i = 0; i < in; i++) {
                    double w = layout[o / block][i / block] ? s[o * in + i] : 0;
                    for (int q = 0; q < rank; q++) {
                        w += u[o * rank + q] * v[q * in + i];
                    }
                    acc += w * xv[row * in + i];
                }
                want[row * out + o] = acc;
            }
        }
        assertArrayEquals(want, y.toDoubleArray(), 1e-12);
    }

    @Test
    void pixelflySparseAndLowRankGradients() {
        Params.Builder pb = new Params.Builder();
        PixelflyLinear px = keep(PixelflyLinear.flatButterfly(pb, dev, "px", 8, 16, true, 2, 4, 2, 3, false, 0.3));
        Params params = randomised(pb, 15);
        Tensor x = input(16, 5, 8);
        Tensor y = keep(dev.allocate(DType.F32, 5, 16));
        gradCheck("pixelfly", params, x, y, () -> px.forward(y, x), px::backward);
    }

    @Test
    void pixelflyGateGradients() {
        Params.Builder pb = new Params.Builder();
        PixelflyLinear px = keep(PixelflyLinear.flatButterfly(pb, dev, "px", 8, 8, true, 2, 4, 1, 2, true, 0.3));
        Params params = randomised(pb, 17);
        Tensor x = input(18, 6, 8);
        Tensor y = keep(dev.allocate(DType.F32, 6, 8));
        gradCheck("gated pixelfly", params, x, y, () -> px.forward(y, x), px::backward);
    }
}
