package org.kindling.models.nn;

import java.util.List;
import org.kindling.ops.Tensor;

/** y[T, C] = (x − mean)/σ · weight + bias over channels. */
public final class LayerNorm implements AutoCloseable {
    public final Params.Handle weight;
    public final Params.Handle bias;
    private final float eps;
    private final Activations acts;
    /** Saved for backward: mean[T], rstd[T]. */
    private final Activation mean;
    private final Activation rstd;
    /** Decoding's own statistics [t], so a pending backward stays intact. */
    private final Activation stepMean;
    private final Activation stepRstd;
    private Tensor x;

    public LayerNorm(Params.Builder pb, org.kindling.ops.Device dev, String name, int channels, double eps) {
        this.weight = pb.add(name + ".weight", Init.ones(), ParamGroup.NO_DECAY, channels);
        this.bias = pb.add(name + ".bias", Init.zeros(), ParamGroup.NO_DECAY, channels);
        this.eps = (float) eps;
        this.acts = new Activations(dev, name);
        this.mean = acts.f32("mean");
        this.rstd = acts.f32("rstd");
        this.stepMean = acts.f32("step_mean");
        this.stepRstd = acts.f32("step_rstd");
    }

    /** Frees the saved statistics until the next forward (recomputation). */
    public void releaseSaved() {
        acts.releaseSaved();
    }

    /** Adds the saved statistics to {@code out}. */
    public void collectSaved(List<Activation> out) {
        acts.collectSaved(out);
    }

    public void forward(Tensor y, Tensor x) {
        int t = x.rows();
        y.device().backend().layerNormForward(y, mean.write(t), rstd.write(t), x, weight.value(), bias.value(), eps);
        this.x = x;
    }

    /** sum = a + b (the residual add before this norm, kept as its input), then y = LN(sum), in one pass. */
    public void forwardAdd(Tensor sum, Tensor y, Tensor a, Tensor b) {
        int t = sum.rows();
        y.device().backend().addLayerNormForward(sum, y, mean.write(t), rstd.write(t), a, b, weight.value(), bias.value(),
                eps);
        this.x = sum;
    }

    /** The forward for decoding: its own buffers, and x is not kept, so a pending backward stays intact. */
    public void forwardStep(Tensor y, Tensor x) {
        int t = x.rows();
        y.device().backend().layerNormForward(y, stepMean.write(t), stepRstd.write(t), x, weight.value(), bias.value(), eps);
    }

    /** dx += ∂L/∂x; weight and bias gradients +=. */
    public void backward(Tensor dx, Tensor dy) {
        int t = dy.rows();
        dy.device().backend().layerNormBackward(dx, weight.grad(), bias.grad(), dy, x, weight.value(), mean.saved(t), rstd.saved(t));
    }

    /** dx += ∂L/∂x + dres (the residual stream's gradient), in one pass; weight and bias gradients +=. */
    public void backwardAdd(Tensor dx, Tensor dy, Tensor dres) {
        int t = dy.rows();
        dy.device().backend().layerNormBackwardAdd(dx, weight.grad(), bias.grad(), dy, dres, x, weight.value(), mean.saved(t),
                rstd.saved(t));
    }

    @Override
    public void close() {
        acts.close();
    }
}
