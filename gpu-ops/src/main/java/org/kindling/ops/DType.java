package org.kindling.ops;

/** Element types a {@link Tensor} can hold. */
public enum DType {
    /**
     * 32-bit IEEE float: activations, weights, gradients and optimizer state. The floating type
     * layers allocate; on the reference device ({@link org.kindling.ops.reference.ReferenceDevice#open}) it is held in double.
     */
    F32(4),
    /** 32-bit signed integer: token ids, targets, sequence offsets. */
    I32(4),
    /** bfloat16 storage (upper half of an F32); kernels compute in F32 and convert explicitly. */
    BF16(2);

    private final int bytes;

    DType(int bytes) {
        this.bytes = bytes;
    }

    /** Size of one element in bytes. */
    public int bytes() {
        return bytes;
    }
}
