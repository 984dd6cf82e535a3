package org.kindling.models.nn;

import org.kindling.ops.Backend;
import org.kindling.ops.BinaryOp;
import org.kindling.ops.Gemm;
import org.kindling.ops.Tensor;

/**
 * y[T, OC] = x[T, IC]·Wᵀ + b, with W[OC, IC] (PyTorch's layout) and an optional bias b[OC]. Its
 * GEMMs take operands of the weight's {@link Params.Handle#gemmWeight} type: under bf16, x and dy
 * are rounded to bf16 and the bf16 copy of x is what backward reads; y, dx and dW stay fp32.
 */
public final class Linear {
    private final String name;
    /** IC */
    public final int in;
    /** OC */
    public final int out;
    public final Params.Handle weight;
    public final Params.Handle bias;
    /** x as the forward's GEMM operand, kept for dW. */
    private final GemmInput xIn;
    /** dy as a backward operand, and x for {@link #apply}, which must not touch the saved one. */
    private final GemmInput scratch;
    private Tensor x;

    /** Weight N(0, std²), decayed; bias zero, not decayed. */
    public Linear(Params.Builder pb, String name, int in, int out, boolean bias, double std) {
        this(pb, name, in, out, bias, Init.normal(std), ParamGroup.DECAY);
    }

    public Linear(Params.Builder pb, String name, int in, int out, boolean bias, Init init, ParamGroup group) {
        this.name = name;
        this.in = in;
        this.out = out;
        this.weight = pb.add(name + ".weight", init, group, out, in);
        this.bias = bias ? pb.add(name + ".bias", Init.zeros(), ParamGroup.NO_DECAY, out) : null;
        this.xIn = pb.gemmInput(name + ".x");
        this.scratch = pb.gemmInput(name + ".scratch");
    }

    /** y = x·Wᵀ + b; keeps a reference to x, which must stay unchanged until {@link #backward}. */
    public void forward(Tensor y, Tensor x) {
        this.x = product(y, x, xIn);
    }

    /**
     * y = x·Wᵀ without the bias, keeping x like {@link #forward}: for a caller that adds the bias in
     * its next kernel ({@code biasGeluForward}, {@code biasDropoutAddForward}). {@link #backward}
     * still forms the bias gradient; {@link #backwardWithoutBias} leaves it to a fused backward kernel.
     */
    public void forwardWithoutBias(Tensor y, Tensor x) {
        this.x = product(y, x, xIn, false);
    }

    /** y = x·Wᵀ + b without keeping x: for decoding, which must leave a pending backward intact. */
    public void apply(Tensor y, Tensor x) {
        product(y, x, scratch);
    }

    /**
     * y += x·Wᵀ + b, keeping x like {@link #forward}: a sum of products (a low-rank term on top of
     * a sparse one) accumulates in the GEMM instead of in an extra pass over y. Same backward.
     */
    public void forwardAdd(Tensor y, Tensor x) {
        this.x = product(y, x, xIn, true, 1f);
    }

    /** y += x·Wᵀ + b without keeping x: {@link #forwardAdd} for decoding. */
    public void applyAdd(Tensor y, Tensor x) {
        product(y, x, scratch, true, 1f);
    }

    private Tensor product(Tensor y, Tensor x, GemmInput operand) {
        return product(y, x, operand, true);
    }

    private Tensor product(Tensor y, Tensor x, GemmInput operand, boolean addBias) {
        return product(y, x, operand, addBias, 0f);
    }

    /** y = x·Wᵀ + beta·y (+ b with addBias); returns x as the operand it multiplied. */
    private Tensor product(Tensor y, Tensor x, GemmInput operand, boolean addBias, float beta) {
        Backend be = y.device().backend();
        int t = x.rows();
        Tensor w = weight.gemmWeight();
        Tensor xg = operand.of(x, w);
        be.gemm(Gemm.of(false, true, t, out, in).scaled(1f, beta), y, xg, w);
        if (addBias && bias != null) {
            be.binary(BinaryOp.ADD, y, y, bias.value());
        }
        return xg;
    }

    /** dx += dy·W (skipped when dx is null); dW += dyᵀ·x; db += Σ_t dy (both skipped while gradients are discarded). */
    public void backward(Tensor dx, Tensor dy) {
        backward(dx, dy, 1f, true);
    }

    /** dx += dy·W; dW += dyᵀ·x; the bias gradient is left to the kernel that added the bias. */
    public void backwardWithoutBias(Tensor dx, Tensor dy) {
        backward(dx, dy, 1f, false);
    }

    /** Like {@link #backward} but dx = dy·W, overwriting it: spares zeroing a fresh gradient buffer. */
    public void backwardOverwrite(Tensor dx, Tensor dy) {
        backward(dx, dy, 0f, true);
    }

    private void backward(Tensor dx, Tensor dy, float beta, boolean biasGrad) {
        Backend be = dy.device().backend();
        int t = dy.rows();
        if (x == null || x.rows() != t) {
            throw new IllegalStateException(name + ": backward for " + t + " rows without a forward over them");
        }
        Tensor w = weight.gemmWeight();
        Tensor dyg = scratch.of(dy, w);
        if (dx != null) {
            be.gemm(Gemm.of(false, false, t, in, out).scaled(1f, beta), dx, dyg, w);
        }
        if (weight.discarded()) {
            return;
        }
        be.gemm(Gemm.of(true, false, out, in, t).scaled(1f, 1f), weight.grad(), dyg, x);
        if (biasGrad && bias != null) {
            be.addColumnSums(bias.grad(), dy);
        }
    }
}
