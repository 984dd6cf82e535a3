package org.kindling.models.nn;

import java.util.ArrayList;
import java.util.List;
import org.kindling.ops.Tensor;

/**
 * Copies of layers' saved activations, taken after one micro-batch's forward so that other
 * micro-batches can run through the same layers before its backward ({@link #restore} puts the
 * bits back into the same buffers). The layers must write every activation at the shape it had
 * then: the buffers, and the references layers keep to them, stay the same objects only so.
 */
public final class SavedActivations implements AutoCloseable {
    private final List<Activation> activations = new ArrayList<>();
    private final List<Tensor> copies = new ArrayList<>();
    private long bytes;

    /** Copies what every one of {@code saved} holds now. */
    public SavedActivations(List<Activation> saved) {
        try {
            for (Activation a : saved) {
                Tensor v = a.ownWritten();
                if (v == null) {
                    continue;
                }
                Tensor copy = v.device().allocate(v.dtype(), v.shape());
                copies.add(copy);
                activations.add(a);
                v.device().backend().copy(copy, v);
                bytes += (long) v.numel() * v.dtype().bytes();
            }
        } catch (RuntimeException e) {
            close();
            throw e;
        }
    }

    /** Writes the copies back, each into its activation at the shape it was taken at. */
    public void restore() {
        for (int i = 0; i < copies.size(); i++) {
            Tensor copy = copies.get(i);
            copy.device().backend().copy(activations.get(i).write(copy.shape()), copy);
        }
    }

    /** Bytes the copies hold. */
    public long bytes() {
        return bytes;
    }

    @Override
    public void close() {
        copies.forEach(Tensor::close);
        copies.clear();
    }
}
