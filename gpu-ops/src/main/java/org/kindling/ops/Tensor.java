package org.kindling.ops;

import java.util.Arrays;
import java.util.function.Consumer;

/**
 * A dense, row-major block of elements of one {@link DType} on one {@link Device}.
 *
 * <p>A tensor either owns its storage (made by {@link Device#allocate}) or is a view into an
 * owner's storage ({@link #view}, {@link #reshape}). Closing the owner frees the memory and makes
 * every view unusable; closing a view does nothing. Element access happens only through explicit
 * host copies ({@link #copyFrom}, {@link #toFloatArray}, {@link #toDoubleArray}) and backend kernels, so the same layer
 * code runs on any backend.
 */
public final class Tensor implements AutoCloseable {
    private final Device device;
    private final Storage storage;
    private final int offset;
    private final int[] shape;
    private final int numel;
    private final boolean owner;
    /** For a scratch view ({@link Device#scratch}): the buffer it leases and where closing returns it; else null. */
    private final Tensor leased;
    private final Consumer<Tensor> giveBack;
    private boolean closed;

    Tensor(Device device, Storage storage, int offset, int[] shape, boolean owner) {
        this(device, storage, offset, shape, owner, null, null);
    }

    private Tensor(Device device, Storage storage, int offset, int[] shape, boolean owner, Tensor leased,
                   Consumer<Tensor> giveBack) {
        this.leased = leased;
        this.giveBack = giveBack;
        this.device = device;
        this.storage = storage;
        this.offset = offset;
        this.shape = shape.clone();
        this.numel = numel(this.shape);
        this.owner = owner;
    }

    /** Number of elements of a shape; every dimension must be non-negative and the total fit an int. */
    public static int numel(int... shape) {
        long n = 1;
        for (int d : shape) {
            if (d < 0) {
                throw new IllegalArgumentException("negative dimension in shape " + Arrays.toString(shape));
            }
            n *= d;
            if (n > Integer.MAX_VALUE) {
                throw new IllegalArgumentException("shape " + Arrays.toString(shape) + " has more than 2^31-1 elements");
            }
        }
        return (int) n;
    }

    public Device device() {
        return device;
    }

    public DType dtype() {
        return storage.dtype();
    }

    public int[] shape() {
        return shape.clone();
    }

    public int rank() {
        return shape.length;
    }

    /** Size of dimension {@code i}; negative {@code i} counts from the end. */
    public int dim(int i) {
        int j = i < 0 ? shape.length + i : i;
        if (j < 0 || j >= shape.length) {
            throw new IndexOutOfBoundsException("dimension " + i + " of a rank-" + shape.length + " tensor");
        }
        return shape[j];
    }

    public int numel() {
        return numel;
    }

    /** Product of all dimensions but the last: the number of rows a row-wise kernel sees. */
    public int rows() {
        return shape.length == 0 ? 1 : numel / Math.max(1, shape[shape.length - 1]);
    }

    /** Size of the last dimension (1 for a scalar). */
    public int cols() {
        return shape.length == 0 ? 1 : shape[shape.length - 1];
    }

    /** Offset of this tensor's first element inside its storage; for backends. */
    public int offset() {
        return offset;
    }

    /** The memory behind this tensor; for backends only. */
    public Storage storage() {
        checkOpen();
        return storage;
    }

    /** A view of {@code numel(shape)} elements starting {@code start} elements into this tensor. */
    public Tensor view(int start, int... shape) {
        checkOpen();
        int n = numel(shape);
        if (start < 0 || (long) start + n > numel) {
            throw new IndexOutOfBoundsException("view of " + n + " elements at " + start + " exceeds "
                    + this + " (" + numel + " elements)");
        }
        return new Tensor(device, storage, offset + start, shape, false);
    }

    /** A view of this owner's first elements shaped {@code shape} whose close passes this owner to {@code giveBack}. */
    Tensor lease(Consumer<Tensor> giveBack, int... shape) {
        checkOpen();
        if (numel(shape) > numel) {
            throw new IndexOutOfBoundsException("lease of " + Arrays.toString(shape) + " exceeds " + this);
        }
        return new Tensor(device, storage, offset, shape, false, this, giveBack);
    }

    /** The same elements under another shape with the same element count. */
    public Tensor reshape(int... shape) {
        if (numel(shape) != numel) {
            throw new IllegalArgumentException("cannot reshape " + this + " to " + Arrays.toString(shape));
        }
        return view(0, shape);
    }

    /** Copies host floats into this F32 or BF16 tensor (BF16 rounds to nearest even). */
    public Tensor copyFrom(float[] src) {
        checkOpen();
        device.backend().copyFromHost(this, src);
        return this;
    }

    /** Copies host doubles into this F32 or BF16 tensor, rounded to what the device stores (see {@link org.kindling.ops.reference.ReferenceDevice#open}). */
    public Tensor copyFrom(double[] src) {
        checkOpen();
        device.backend().copyFromHost(this, src);
        return this;
    }

    /** Copies host ints into this I32 tensor. */
    public Tensor copyFrom(int[] src) {
        checkOpen();
        device.backend().copyFromHost(this, src);
        return this;
    }

    /** The elements of this F32 or BF16 tensor as host floats. */
    public float[] toFloatArray() {
        checkOpen();
        float[] out = new float[numel];
        device.backend().copyToHost(out, this);
        return out;
    }

    /** The elements of this F32 or BF16 tensor as host doubles: exact, in the precision the device holds. */
    public double[] toDoubleArray() {
        checkOpen();
        double[] out = new double[numel];
        device.backend().copyToHost(out, this);
        return out;
    }

    /** The elements of this I32 tensor as host ints. */
    public int[] toIntArray() {
        checkOpen();
        int[] out = new int[numel];
        device.backend().copyToHost(out, this);
        return out;
    }

    public boolean isClosed() {
        return closed || storage.isReleased();
    }

    void checkOpen() {
        if (isClosed()) {
            throw new IllegalStateException(this + " is closed");
        }
    }

    /** Frees the storage if this tensor owns it; closing twice is harmless. */
    @Override
    public void close() {
        if (closed) {
            return;
        }
        closed = true;
        if (leased != null) {
            giveBack.accept(leased);
        }
        if (owner) {
            storage.release();
            device.released(this);
        }
    }

    /** Storage bytes this tensor owns (0 for a view). */
    long ownedBytes() {
        return owner ? storage.bytes() : 0;
    }

    @Override
    public String toString() {
        return "Tensor[" + storage.dtype() + " " + Arrays.toString(shape) + " on " + device + "]";
    }
}
