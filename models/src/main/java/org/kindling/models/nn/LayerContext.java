package org.kindling.models.nn;

import org.kindling.ops.Device;

/**
 * What a layer spec needs to build its layer: where to declare parameters, the device for its
 * activations, its name and place in the model.
 *
 * @param params where the layer declares its parameters and fixed tensors
 * @param device the device of its activations
 * @param name dotted prefix of its parameter names, e.g. {@code h.3.mixer}
 * @param dModel channels C of the residual stream
 * @param layer index of its block
 * @param nLayer blocks in the model
 * @param initStd standard deviation of weight init
 * @param seed the model's seed, for tensors a layer redraws while training (Performer's features)
 * @param step the pass in progress, shared by all layers of the model (training, seeds, metrics)
 * @param maxSeq the model's longest sequence ({@code max_seq}); 0 when it has no limit
 */
public record LayerContext(Params.Builder params, Device device, String name, int dModel, int layer, int nLayer,
                           double initStd, long seed, StepContext step, int maxSeq) {
    /** A layer of a model without a sequence limit. */
    public LayerContext(Params.Builder params, Device device, String name, int dModel, int layer, int nLayer, double initStd,
                        long seed, StepContext step) {
        this(params, device, name, dModel, layer, nLayer, initStd, seed, step, 0);
    }

    /** A layer of its own, outside a model: passes are evaluation until its step context is told otherwise. */
    public LayerContext(Params.Builder params, Device device, String name, int dModel, int layer, int nLayer, double initStd,
                        long seed) {
        this(params, device, name, dModel, layer, nLayer, initStd, seed, new StepContext());
    }

    /** GPT-2's init for projections into the residual stream: initStd/√(2·nLayer). */
    public double residualStd() {
        return initStd / Math.sqrt(2.0 * nLayer);
    }

    /** The name of a tensor of this layer: {@code name.suffix}. */
    public String child(String suffix) {
        return name + "." + suffix;
    }
}
