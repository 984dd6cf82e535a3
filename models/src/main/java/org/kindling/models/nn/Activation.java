package org.kindling.models.nn;

import java.util.Arrays;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;

/**
 * One activation buffer of a layer, declared as a field with its shape in the layer's javadoc
 * (as llm.c declares its activations). It only grows: it keeps the capacity of the largest shape
 * written and hands out views for smaller ones, so packed batches whose token count changes every
 * step allocate nothing once the largest has been seen. A scratch activation ({@link
 * Activations#scratch}) views a buffer of the model's {@link Workspace} instead of its own. The
 * forward pass writes it through {@link #write}; the backward pass reads it through {@link #saved},
 * which fails unless the forward wrote it at that shape.
 */
public final class Activation implements AutoCloseable {
    private final Device dev;
    private final String name;
    private final DType dtype;
    /** The workspace buffer this one views, or null when it owns {@link #own}. */
    private final Workspace.Slot slot;
    private boolean released;
    /** {@link #release} freed the buffer since the last write. */
    private boolean freedForRecompute;
    private Tensor own;
    /** The buffer {@link #view} was cut from, to notice a shared buffer grown since. */
    private Tensor backing;
    private Tensor view;

    Activation(Device dev, String name, DType dtype, Workspace.Slot slot) {
        this.dev = dev;
        this.name = name;
        this.dtype = dtype;
        this.slot = slot;
    }

    /** The buffer at {@code shape}; its contents are whatever was last written. */
    public Tensor write(int... shape) {
        Tensor buf = capacity(Tensor.numel(shape));
        freedForRecompute = false;
        if (view != null && buf == backing && Arrays.equals(view.shape(), shape)) {
            return view;
        }
        backing = buf;
        view = buf.view(0, shape);
        return view;
    }

    private Tensor capacity(int n) {
        if (slot != null) {
            return slot.atLeast(n);
        }
        if (own == null || own.numel() < n) {
            if (own != null) {
                own.close();
            }
            own = dev.allocate(dtype, n);
        }
        return own;
    }

    /** Like {@link #write} but zero-filled: for gradients, which backward kernels accumulate into. */
    public Tensor zeros(int... shape) {
        Tensor z = write(shape);
        dev.backend().fill(z, 0f);
        return z;
    }

    /**
     * Frees this activation's own buffer until the next {@link #write}, for recomputation: a scratch
     * activation keeps its workspace buffer, which other layers share.
     */
    void release() {
        if (slot == null && own != null) {
            own.close();
            own = null;
            view = null;
            backing = null;
            freedForRecompute = true;
        }
    }

    /** The buffer as last written when this activation owns it (not a workspace scratch one), else null. */
    Tensor ownWritten() {
        return slot == null && view != null && !view.isClosed() ? view : null;
    }

    /** Bytes of the buffer this activation owns now (0 for a workspace scratch one or a released one). */
    public long bytesHeld() {
        return own == null ? 0 : (long) own.numel() * dtype.bytes();
    }

    /** The buffer as the last forward wrote it: an error if it wrote none, or one of another shape. */
    public Tensor saved(int... shape) {
        if (view == null || view.isClosed() || !Arrays.equals(view.shape(), shape)) {
            throw new IllegalStateException("saved activation " + name + " " + dtype + Arrays.toString(shape)
                    + (view == null && freedForRecompute ? " was released for recomputation and not recomputed since"
                    : view == null ? " was never written by a forward pass"
                    : view.isClosed() ? " was freed since it was written" : " was last written as " + Arrays.toString(view.shape())));
        }
        return view;
    }

    @Override
    public void close() {
        view = null;
        backing = null;
        if (slot != null) {
            // Once: a second release would free a shared buffer other layers still use.
            if (!released) {
                released = true;
                slot.release();
            }
        } else if (own != null) {
            own.close();
            own = null;
        }
    }
}
