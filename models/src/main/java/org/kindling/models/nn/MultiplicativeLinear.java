package org.kindling.models.nn;

import org.kindling.ops.Backend;
import org.kindling.ops.BinaryOp;
import org.kindling.ops.Device;
import org.kindling.ops.Gemm;
import org.kindling.ops.Tensor;

/**
 * Scaling Transformers' multiplicative layer (trax {@code FactoredDense}): y[T, OC] with OC = S·M,
 * module s of each row being y[t, s·M + m] = Σ_i x[t, i]·D[s, i]·E[i, m] (+ b[s·M + m]), for a
 * gate D [S, IC], a projection E [IC, M] shared by every module and an optional bias b [OC]:
 * S·IC + IC·OC/S weights instead of IC·OC, yet any permutation of the input (among other maps) is
 * exactly representable. Each module is one {@code binary MUL} (x scaled by D's row s) and one GEMM
 * into that module's columns of y. Computes in fp32 also under bf16 precision.
 */
public final class MultiplicativeLinear implements AutoCloseable {
    private final String name;
    /** IC */
    public final int in;
    /** OC = S·M */
    public final int out;
    /** S */
    public final int modules;
    /** M = OC / S */
    public final int unit;
    /** D [S, IC] */
    public final Params.Handle gate;
    /** E [IC, M] */
    public final Params.Handle weight;
    /** b [OC], or null */
    public final Params.Handle bias;
    private final Activations acts;
    /** x scaled by one row of D [T, IC]; in backward also d(that)·x. */
    private final Activation gated;
    /** Backward: the gradient of the gated input [T, IC]. */
    private final Activation dgated;
    private Tensor x;

    /**
     * D ~ N(0, 1) and E ~ N(0, std²), so y has the variance of a dense N(0, std²) layer's output;
     * bias zero. D and E are decayed, the bias not.
     */
    public MultiplicativeLinear(Params.Builder pb, Device dev, Workspace workspace, String name, int in, int out, int modules, boolean bias,
                                double std) {
        if (modules < 1 || out % modules != 0) {
            throw new IllegalArgumentException(name + ": " + modules + " modules do not divide the output width " + out);
        }
        this.name = name;
        this.in = in;
        this.out = out;
        this.modules = modules;
        this.unit = out / modules;
        this.gate = pb.add(name + ".gate", Init.normal(1.0), ParamGroup.DECAY, modules, in);
        this.weight = pb.add(name + ".weight", Init.normal(std), ParamGroup.DECAY, in, unit);
        this.bias = bias ? pb.add(name + ".bias", Init.zeros(), ParamGroup.NO_DECAY, out) : null;
        this.acts = new Activations(dev, name, workspace);
        this.gated = acts.scratch("mult.gated");
        this.dgated = acts.scratch("mult.dgated");
    }

    /** Trainable elements: S·IC + IC·M (+ OC with a bias). */
    public long parameters() {
        return (long) modules * in + (long) in * unit + (bias != null ? out : 0);
    }

    /** y = layer(x); keeps a reference to x, which must stay unchanged until {@link #backward}. */
    public void forward(Tensor y, Tensor x) {
        apply(y, x);
        this.x = x;
    }

    /** y = layer(x) without keeping x: decoding, which must leave a pending backward intact. */
    public void apply(Tensor y, Tensor x) {
        Backend be = y.device().backend();
        int t = x.rows();
        Tensor g = gated.write(t, in);
        Gemm gemm = new Gemm(false, false, t, unit, in, in, unit, out, 1f, 0f, 1, 0, 0, 0);
        for (int s = 0; s < modules; s++) {
            be.binary(BinaryOp.MUL, g, x, gateRow(s));
            be.gemm(gemm, y.view(s * unit, (int) gemm.spanC()), g, weight.value());
        }
        if (bias != null) {
            be.binary(BinaryOp.ADD, y, y, bias.value());
        }
    }

    /** dx += ∂L/∂x; dD, dE, db +=. Per module: g = x·D[s], dE += gᵀ·dy_s, dg = dy_s·Eᵀ, dD[s] += Σ_t dg·x, dx += dg·D[s]. */
    public void backward(Tensor dx, Tensor dy) {
        Backend be = dy.device().backend();
        int t = dy.rows();
        if (x == null || x.rows() != t) {
            throw new IllegalStateException(name + ": backward for " + t + " rows without a forward over them");
        }
        Tensor g = gated.write(t, in);
        Tensor dg = dgated.write(t, in);
        Gemm dE = new Gemm(true, false, in, unit, t, in, out, unit, 1f, 1f, 1, 0, 0, 0);
        Gemm dG = new Gemm(false, true, t, in, unit, out, unit, in, 1f, 0f, 1, 0, 0, 0);
        for (int s = 0; s < modules; s++) {
            Tensor row = gateRow(s);
            be.binary(BinaryOp.MUL, g, x, row);
            be.gemm(dE, weight.grad(), g, dy.view(s * unit, (int) dE.spanB()));
            be.gemm(dG, dg, dy.view(s * unit, (int) dG.spanA()), weight.value());
            be.binary(BinaryOp.MUL, g, dg, x);
            be.addColumnSums(gate.grad().view(s * in, in), g);
            be.binary(BinaryOp.MUL, dg, dg, row);
            be.binary(BinaryOp.ADD, dx, dx, dg);
        }
        if (bias != null) {
            be.addColumnSums(bias.grad(), dy);
        }
    }

    private Tensor gateRow(int s) {
        return gate.value().view(s * in, in);
    }

    @Override
    public void close() {
        acts.close();
    }
}
