package org.kindling.models;

import java.util.ArrayList;
import java.util.List;
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

    @Override
    public void close() throws Exception {
        for (int i = open.size() - 1; i >= 0; i--) {
            open.get(i).close();
        }
        dev.close();
    }
}
