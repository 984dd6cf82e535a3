package org.kindling.models.nn;

import java.util.ArrayList;
import java.util.List;
import org.kindling.ops.DType;
import org.kindling.ops.Device;

/** Declares a layer's {@link Activation}s and frees them together (its scratch ones return to the workspace). */
public final class Activations implements AutoCloseable {
    private final Device dev;
    private final String owner;
    private final Workspace workspace;
    private final List<Activation> all = new ArrayList<>();

    /** A layer of its own: its scratch is its own too. @param owner the layer's name, for errors */
    public Activations(Device dev, String owner) {
        this(dev, owner, new Workspace());
    }

    /** A layer of a model, whose scratch comes from the model's {@code workspace}. @param owner the layer's name, for errors */
    public Activations(Device dev, String owner, Workspace workspace) {
        this.dev = dev;
        this.owner = owner;
        this.workspace = workspace;
        workspace.register(this);
    }

    String owner() {
        return owner;
    }

    /**
     * Frees every saved (non-scratch) buffer until its next write, for a layer whose forward will run
     * again before its backward; scratch buffers belong to the workspace and stay.
     */
    public void releaseSaved() {
        all.forEach(Activation::release);
    }

    /** {@link #releaseSaved} of this layer and of every layer inside it ({@code owner.…}) that shares its workspace. */
    public void releaseSavedWithin() {
        workspace.releaseSaved(owner);
    }

    /** Adds this layer's own (non-scratch) activations to {@code out}. */
    public void collectSaved(List<Activation> out) {
        for (Activation a : all) {
            if (a.ownWritten() != null) {
                out.add(a);
            }
        }
    }

    /** {@link #collectSaved} of this layer and of every layer inside it that shares its workspace. */
    public void collectSavedWithin(List<Activation> out) {
        workspace.collectSaved(owner, out);
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

    /**
     * An F32 buffer live only within one backward or decode step of this layer, shared under
     * {@code key} with every layer of the model (see {@link Workspace} for choosing keys).
     */
    public Activation scratch(String key) {
        return add(new Activation(dev, owner + "." + key, DType.F32, workspace.slot(dev, key, DType.F32)));
    }

    private Activation of(String name, DType dtype) {
        return add(new Activation(dev, owner + "." + name, dtype, null));
    }

    private Activation add(Activation a) {
        all.add(a);
        return a;
    }

    @Override
    public void close() {
        workspace.unregister(this);
        all.forEach(Activation::close);
    }
}
