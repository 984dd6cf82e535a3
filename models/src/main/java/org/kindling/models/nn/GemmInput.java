package org.kindling.models.nn;

import org.kindling.ops.Tensor;

/**
 * One GEMM operand of a layer in the type its weight has: the activation itself when the types
 * agree (fp32), else a copy rounded to that type (bf16), held in a buffer that only grows (a
 * smaller batch gets a view), so steady-state training allocates nothing. Declared on {@link Params.Builder#gemmInput} and freed with the model's
 * parameters, so layers without an {@link Activations} of their own (Linear) need no close.
 */
public final class GemmInput implements AutoCloseable {
    private final String name;
    private Tensor copy;

    GemmInput(String name) {
        this.name = name;
    }

    /** {@code x} as an operand beside {@code weight}: x itself, or its copy rounded to the weight's dtype. */
    public Tensor of(Tensor x, Tensor weight) {
        if (x.dtype() == weight.dtype()) {
            return x;
        }
        if (copy == null || copy.dtype() != weight.dtype() || copy.device() != x.device() || copy.numel() < x.numel()) {
            close();
            copy = x.device().allocate(weight.dtype(), x.numel());
        }
        Tensor operand = copy.view(0, x.shape());
        x.device().backend().copy(operand, x);
        return operand;
    }

    @Override
    public void close() {
        if (copy != null) {
            copy.close();
            copy = null;
        }
    }

    @Override
    public String toString() {
        return "gemm input " + name;
    }
}
