package org.kindling.models;

import org.kindling.ops.Tensor;

/**
 * One named parameter: a view into the model's flat weight buffer and the matching view into the
 * flat gradient buffer, so the optimizer and the gradient norm each run as one kernel call.
 *
 * @param name dotted name, e.g. {@code h.0.attn.q.weight}
 * @param value the weights
 * @param grad the accumulated gradient, same shape
 * @param decay whether AdamW's weight decay applies (matrices yes; biases, norms no)
 */
public record Param(String name, Tensor value, Tensor grad, boolean decay) {
    public int[] shape() {
        return value.shape();
    }

    public int numel() {
        return value.numel();
    }
}
