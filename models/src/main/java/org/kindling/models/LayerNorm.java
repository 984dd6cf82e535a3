package org.kindling.models;

import org.kindling.ops.Tensor;

/** y[T, C] = (x − mean)/σ · weight + bias over channels; saves mean[T] and rstd[T]. */
final class LayerNorm implements AutoCloseable {
    final Params.Handle weight;
    final Params.Handle bias;
    private final float eps;
    private final Buffers saved;
    private Tensor x;

    LayerNorm(Params.Builder pb, Buffers saved, String name, int channels, double eps) {
        this.weight = pb.add(name + ".weight", Params.Init.ONES, 0, false, channels);
        this.bias = pb.add(name + ".bias", Params.Init.ZEROS, 0, false, channels);
        this.eps = (float) eps;
        this.saved = saved;
    }

    void forward(Tensor y, Tensor x) {
        normalize(y, x, "");
        this.x = x;
    }

    /** The forward for decoding: its own buffers, and x is not kept, so a pending backward stays intact. */
    void forwardStep(Tensor y, Tensor x) {
        normalize(y, x, "step_");
    }

    private void normalize(Tensor y, Tensor x, String prefix) {
        int t = x.rows();
        y.device().backend().layerNormForward(y, saved.f32(prefix + "mean", t), saved.f32(prefix + "rstd", t), x,
                weight.value(), bias.value(), eps);
    }

    /** dx += ∂L/∂x; weight and bias gradients +=. */
    void backward(Tensor dx, Tensor dy) {
        int t = dy.rows();
        Tensor mean = saved.saved("mean", t);
        Tensor rstd = saved.saved("rstd", t);
        dy.device().backend().layerNormBackward(dx, weight.grad(), bias.grad(), dy, x, weight.value(), mean, rstd);
    }

    @Override
    public void close() {
        saved.close();
    }
}
