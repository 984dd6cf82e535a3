package org.kindling.models;

import java.util.ArrayList;
import java.util.List;
import java.util.function.BiConsumer;
import org.kindling.models.nn.Param;
import org.kindling.models.nn.Params;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;
import org.kindling.ops.reference.ReferenceDevice;

/**
 * A test's fp64 reference device and everything it opened there, closed together (last opened
 * first, the device last), so a leak fails the test.
 */
final class ReferenceTensors implements AutoCloseable {
    final Device dev = ReferenceDevice.open();
    private final List<AutoCloseable> open = new ArrayList<>();

    <T extends AutoCloseable> T keep(T t) {
        open.add(t);
        return t;
    }

    /** A [t, c] input drawn from {@code seed}, uniform in [-1, 1). */
    Tensor input(long seed, int t, int c) {
        return keep(dev.allocate(DType.F32, t, c)).copyFrom(GradCheck.uniform(seed, t * c, 1.0));
    }

    /** Parameters built from {@code seed}, then every weight (biases and norm affines too) redrawn so each term matters. */
    Params params(Params.Builder pb, long seed, double scale) {
        Params params = keep(pb.build(dev, seed));
        params.values().copyFrom(GradCheck.uniform(seed + 1, params.count(), scale));
        return params;
    }

    /** Probes of x (gradient into dx) and of every parameter. */
    static List<GradCheck.Probe> probes(Params params, Tensor x, Tensor dx) {
        List<GradCheck.Probe> out = new ArrayList<>();
        out.add(new GradCheck.Probe("x", x, dx));
        for (Param p : params.list()) {
            out.add(new GradCheck.Probe(p.name(), p.value(), p.grad()));
        }
        return out;
    }

    /** The shared layer harness: L = Σ w·layer(x), checked for x and every parameter. */
    void check(String what, Params params, Tensor x, Tensor y, Runnable forward, BiConsumer<Tensor, Tensor> backward) {
        double[] w = GradCheck.uniform(99, y.numel(), 1.0);
        Tensor dy = keep(dev.allocate(DType.F32, y.shape()));
        Tensor dx = keep(dev.allocate(DType.F32, x.shape()));
        GradCheck.check(what, () -> {
            forward.run();
            return GradCheck.dot(y, w);
        }, () -> {
            // Some layers consume dy (Block turns it into the residual gradient): hand over a fresh copy.
            dy.copyFrom(w);
            dev.backend().fill(dx, 0f);
            params.zeroGrad();
            backward.accept(dx, dy);
        }, probes(params, x, dx));
    }

    @Override
    public void close() throws Exception {
        for (int i = open.size() - 1; i >= 0; i--) {
            open.get(i).close();
        }
        dev.close();
    }
}
