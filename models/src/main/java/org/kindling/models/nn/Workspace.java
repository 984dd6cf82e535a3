package org.kindling.models.nn;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;

/**
 * The buffers of a model that live only within one layer's backward or one decode step, shared by
 * every layer (layers run such passes one at a time), each as large as its largest request: a
 * layer declares one through {@link Activations#scratch} under a key naming its role, e.g.
 * {@code block.dln}, and every layer using that key gets the same memory. Two buffers a layer needs
 * at once must have different keys, and so must a layer's and those of the layers it calls.
 * Saved activations stay per layer; the workspace knows each layer's {@link Activations} by owner
 * name, so that a block can release its layers' saved activations for recomputation ({@link
 * #releaseSaved}). A buffer is freed when the last layer using it closes.
 */
public final class Workspace {
    private final Map<String, Slot> slots = new HashMap<>();
    private final List<Activations> layers = new ArrayList<>();

    void register(Activations acts) {
        layers.add(acts);
    }

    void unregister(Activations acts) {
        layers.remove(acts);
    }

    /**
     * {@link Activations#releaseSaved} of every layer named {@code owner} or inside it ({@code
     * owner.…}), e.g. {@code h.3} for block 3 and every mixer and linear it holds.
     */
    public void releaseSaved(String owner) {
        for (Activations a : layers) {
            if (a.owner().equals(owner) || a.owner().startsWith(owner + ".")) {
                a.releaseSaved();
            }
        }
    }

    /** {@link Activations#collectSaved} of every layer named {@code owner} or inside it. */
    void collectSaved(String owner, List<Activation> out) {
        for (Activations a : layers) {
            if (a.owner().equals(owner) || a.owner().startsWith(owner + ".")) {
                a.collectSaved(out);
            }
        }
    }

    Slot slot(Device dev, String key, DType dtype) {
        Slot s = slots.computeIfAbsent(key + " " + dtype + " on " + dev, k -> new Slot(k, dev, dtype));
        s.users++;
        return s;
    }

    /** One shared buffer, grown to the largest request. */
    final class Slot {
        private final String key;
        private final Device dev;
        private final DType dtype;
        private Tensor buffer;
        private int users;

        private Slot(String key, Device dev, DType dtype) {
            this.key = key;
            this.dev = dev;
            this.dtype = dtype;
        }

        /** The buffer, holding at least {@code n} elements; growing it frees the old one (and its contents). */
        Tensor atLeast(int n) {
            if (buffer == null || buffer.numel() < n) {
                if (buffer != null) {
                    buffer.close();
                }
                buffer = dev.allocate(dtype, n);
            }
            return buffer;
        }

        void release() {
            if (--users == 0) {
                if (buffer != null) {
                    buffer.close();
                    buffer = null;
                }
                slots.remove(key);
            }
        }
    }
}
