package org.kindling.ops;

/**
 * The memory behind one or more tensors on one device. A backend knows its own subclass; layer
 * code never touches storage directly.
 */
public abstract class Storage {
    private final DType dtype;
    private final int length;
    private boolean released;

    protected Storage(DType dtype, int length) {
        this.dtype = dtype;
        this.length = length;
    }

    public DType dtype() {
        return dtype;
    }

    /** Number of elements. */
    public int length() {
        return length;
    }

    public long bytes() {
        return (long) length * dtype.bytes();
    }

    public boolean isReleased() {
        return released;
    }

    /** Frees the memory; called once by the owning tensor's {@code close()}. */
    void release() {
        released = true;
        free();
    }

    protected abstract void free();
}
