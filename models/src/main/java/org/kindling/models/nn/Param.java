package org.kindling.models.nn;

import org.kindling.ops.Tensor;

/**
 * One named tensor of a model. A trainable parameter is a view into the model's flat weight
 * buffer with the matching view into the flat gradient buffer, so the optimizer and the gradient
 * norm each run as a few kernel calls; a fixed tensor (a random projection, a shift matrix) has no
 * gradient but is saved in checkpoints like the weights.
 *
 * @param name dotted name, e.g. {@code h.0.attn.q.weight}
 * @param value the weights
 * @param grad the accumulated gradient, same shape; null for a fixed tensor
 * @param group how the optimizer treats it; null for a fixed tensor
 */
public record Param(String name, Tensor value, Tensor grad, ParamGroup group) {
    public int[] shape() {
        return value.shape();
    }

    public int numel() {
        return value.numel();
    }

    public boolean trainable() {
        return grad != null;
    }
}
