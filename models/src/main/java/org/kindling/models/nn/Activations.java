package org.kindling.models.nn;

import java.util.ArrayList;
import java.util.List;
import org.kindling.ops.DType;
import org.kindling.ops.Device;

/** Declares a layer's {@link Activation}s and frees them together. */
public final class Activations implements AutoCloseable {
    private final Device dev;
    private final String owner;
    private final List<Activation> all = new ArrayList<>();

    /** @param owner the layer's name, for errors */
    public Activations(Device dev, String owner) {
        this.dev = dev;
        this.owner = owner;
    }

    public Device device() {
        return dev;
    }

    public Activation f32(String name) {
        return of(name, DType.F32);
    }

    public Activation i32(String name) {
        return of(name, DType.I32);
    }

    private Activation of(String name, DType dtype) {
        Activation a = new Activation(dev, owner + "." + name, dtype);
        all.add(a);
        return a;
    }

    @Override
    public void close() {
        all.forEach(Activation::close);
    }
}
