package org.kindling.models.nn;

import org.kindling.ops.Backend;
import org.kindling.ops.BinaryOp;
import org.kindling.ops.BlockLayout;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.ReduceOp;
import org.kindling.ops.Tensor;
import org.kindling.ops.UnaryOp;

/**
 * Pixelated Butterfly's linear: W ≈ S + U·Vᵀ, y[T, OC] = x·Sᵀ + (x·Vᵀ)·Uᵀ + b, with S [OC, IC]
 * block-sparse on a block layout (the flat butterfly: {@link #flatButterfly}) and U [OC, r],
 * V [r, IC] of rank r (0: none). With a gate, a per-token g = sigmoid(x·w_g + b_g) mixes them:
 * y = g·x·Sᵀ + (1 − g)·x·Vᵀ·Uᵀ + b. S is stored compressed as its kept blocks [nnz, block, block]
 * in the CSR order of {@link #layout()}, so parameters, optimizer state and checkpoints hold only
 * those blocks, and its products are the backend's block-sparse GEMMs
 * ({@link Backend#blockSparseLinear} and its two gradients), in fp32 under any precision.
 *
 * <p>Initialisation keeps the output variance IC·σ²·Var(x) of a dense N(0, σ²) layer: S and U·Vᵀ
 * each give half of it, or, with the gate (zero-initialised, so g = ½), twice it, since
 * g² + (1 − g)² = ½.
 */
public final class PixelflyLinear implements Projection {
    /** The MLP setting of the paper: block 32, butterfly size 16, 2 factors, rank 32. */
    public static final int REFERENCE_BLOCK = 32;
    public static final int REFERENCE_BUTTERFLY_SIZE = 16;
    public static final int REFERENCE_FACTORS = 2;
    public static final int REFERENCE_RANK = 32;

    private final String name;
    private final Device dev;
    public final int in;
    public final int out;
    public final int rank;
    /** S's kept blocks [nnz, block, block], in the CSR order of {@link #layout}. */
    public final Params.Handle sparse;
    public final Params.Handle bias;
    /** x·Vᵀ and h·Uᵀ; null when rank is 0. */
    private final Linear lowV;
    private final Linear lowU;
    /** The gate's logit x·w_gᵀ + b_g [T, 1]; null without a gate. */
    private final Linear gate;
    private final BlockLayout layout;
    /** A decoding twin: applies the sub-layers without saving, has no backward. */
    private final boolean decoding;
    private final int density;
    private int capacity;
    private Tensor sBuf;
    private Tensor lBuf;
    private Tensor hBuf;
    private Tensor dhBuf;
    private Tensor gateLogit;
    private Tensor gateValue;
    private Tensor dGate;
    private Tensor dGateLogit;
    private Tensor scratch;
    private Tensor x;

    /**
     * @param layout kept blocks, [OC / block][IC / block]
     * @param denseStd σ of the dense layer whose output variance the initialisation keeps
     */
    public PixelflyLinear(Params.Builder pb, Device dev, String name, int in, int out, boolean bias, boolean[][] layout,
            int block, int rank, boolean gated, double denseStd) {
        if (block < 1 || in % block != 0 || out % block != 0) {
            throw new IllegalArgumentException(name + ": pixelfly block " + block + " must divide in " + in + " and out " + out);
        }
        if (layout.length != out / block || layout[0].length != in / block) {
            throw new IllegalArgumentException(name + ": pixelfly layout is " + layout.length + "×" + layout[0].length
                    + " blocks, not " + out / block + "×" + in / block);
        }
        if (rank < 0 || rank > Math.min(in, out)) {
            throw new IllegalArgumentException(name + ": pixelfly rank " + rank + " must be in 0…" + Math.min(in, out));
        }
        this.name = name;
        this.dev = dev;
        this.in = in;
        this.out = out;
        this.rank = rank;
        this.layout = BlockLayout.of(out / block, in / block, block, (r, c) -> layout[r][c]);
        this.density = this.layout.weightNumel();
        if (density == 0) {
            throw new IllegalArgumentException(name + ": pixelfly layout keeps no block");
        }
        boolean lowRank = rank > 0;
        double share = (gated ? 2.0 : 0.5) * (lowRank ? 1.0 : 2.0);
        double variance = in * denseStd * denseStd * share;
        // An output row keeps density / OC weights on average (rows differ where nodes straddle blocks).
        this.sparse = pb.add(name + ".sparse", Init.normal(Math.sqrt(variance * out / density)), ParamGroup.DECAY,
                this.layout.nnz(), block, block);
        if (lowRank) {
            // Var(x·Vᵀ) = Var(x) with V ~ N(0, 1/IC); U carries the rest.
            this.lowV = new Linear(pb, name + ".low_v", in, rank, false, Init.normal(Math.sqrt(1.0 / in)), ParamGroup.DECAY);
            this.lowU = new Linear(pb, name + ".low_u", rank, out, false, Init.normal(Math.sqrt(variance / rank)), ParamGroup.DECAY);
        } else {
            this.lowV = null;
            this.lowU = null;
        }
        this.gate = gated ? new Linear(pb, name + ".gate", in, 1, true, Init.zeros(), ParamGroup.NO_DECAY) : null;
        this.bias = bias ? pb.add(name + ".bias", Init.zeros(), ParamGroup.NO_DECAY, out) : null;
        this.decoding = false;
    }

    private PixelflyLinear(PixelflyLinear of) {
        this.name = of.name + " (decoding)";
        this.dev = of.dev;
        this.in = of.in;
        this.out = of.out;
        this.rank = of.rank;
        this.sparse = of.sparse;
        this.bias = of.bias;
        this.lowV = of.lowV;
        this.lowU = of.lowU;
        this.gate = of.gate;
        this.layout = of.layout;
        this.density = of.density;
        this.decoding = true;
    }

    @Override
    public PixelflyLinear decodingTwin() {
        if (decoding) {
            throw new IllegalStateException(name + " is already a decoding twin");
        }
        return new PixelflyLinear(this);
    }

    private static void run(Linear lin, boolean keep, Tensor y, Tensor x) {
        if (keep) {
            lin.forward(y, x);
        } else {
            lin.apply(y, x);
        }
    }

    /** The flat butterfly layout over blocks of {@code block}: see {@link FlatButterfly#layout}. */
    public static PixelflyLinear flatButterfly(Params.Builder pb, Device dev, String name, int in, int out, boolean bias,
            int block, int butterflySize, int factors, int rank, boolean gated, double denseStd) {
        boolean[][] layout;
        try {
            layout = FlatButterfly.layout(out, in, block, butterflySize, factors);
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException(name + ": pixelfly " + e.getMessage(), e);
        }
        return new PixelflyLinear(pb, dev, name, in, out, bias, layout, block, rank, gated, denseStd);
    }

    /** Which blocks of S [OC, IC] are kept; the CSR order is that of {@link #sparse}'s blocks. */
    public BlockLayout layout() {
        return layout;
    }

    /** Kept weights of S plus the low-rank, gate and bias parameters: every trainable element of the layer. */
    public long effectiveParams() {
        return density + (long) rank * (in + out) + (gate != null ? in + 1 : 0) + (bias != null ? out : 0);
    }

    private void ensure(int t) {
        if (t <= capacity) {
            return;
        }
        release();
        capacity = t;
        if (rank > 0) {
            hBuf = dev.allocate(DType.F32, t * rank);
            dhBuf = dev.allocate(DType.F32, t * rank);
        }
        if (gate != null) {
            // Only the gate needs S's and the low-rank product's outputs apart; without it both add into y.
            sBuf = dev.allocate(DType.F32, t * out);
            lBuf = dev.allocate(DType.F32, t * out);
            scratch = dev.allocate(DType.F32, t * out);
            gateLogit = dev.allocate(DType.F32, t);
            gateValue = dev.allocate(DType.F32, t);
            dGate = dev.allocate(DType.F32, t);
            dGateLogit = dev.allocate(DType.F32, t);
        }
    }

    /** y = g·x·Sᵀ + (1 − g)·x·Vᵀ·Uᵀ + b (g = 1 and 1 without a gate); x must not change until backward. */
    @Override
    public int out() {
        return out;
    }

    @Override
    public void forward(Tensor y, Tensor x) {
        if (x.cols() != in || y.cols() != out || x.rows() != y.rows()) {
            throw new IllegalArgumentException(name + ": forward of x " + x + " into y " + y + " for in " + in + ", out " + out);
        }
        int t = x.rows();
        ensure(t);
        Backend be = dev.backend();
        Tensor s = gate != null ? sBuf.view(0, t, out) : y;
        be.blockSparseLinear(s, x, sparse.value(), layout);
        if (rank > 0) {
            Tensor h = hBuf.view(0, t, rank);
            run(lowV, !decoding, h, x);
            if (gate == null) {
                if (decoding) {
                    lowU.applyAdd(y, h);
                } else {
                    lowU.forwardAdd(y, h);
                }
            } else {
                Tensor l = lBuf.view(0, t, out);
                run(lowU, !decoding, l, h);
                Tensor logit = gateLogit.view(0, t, 1);
                run(gate, !decoding, logit, x);
                be.unary(UnaryOp.SIGMOID, gateValue.view(0, t), logit.reshape(t));
                Tensor diff = scratch.view(0, t, out);
                be.binary(BinaryOp.SUB, diff, s, l);
                be.scaleRows(y, diff, gateValue.view(0, t));
                be.binary(BinaryOp.ADD, y, y, l);
            }
        } else if (gate != null) {
            Tensor logit = gateLogit.view(0, t, 1);
            run(gate, !decoding, logit, x);
            be.unary(UnaryOp.SIGMOID, gateValue.view(0, t), logit.reshape(t));
            be.scaleRows(y, s, gateValue.view(0, t));
        }
        if (bias != null) {
            be.binary(BinaryOp.ADD, y, y, bias.value());
        }
        this.x = decoding ? null : x;
    }

    /** dx += dy·∂y/∂x (skipped when dx is null); every parameter gradient accumulates. */
    @Override
    public void backward(Tensor dx, Tensor dy) {
        int t = dy.rows();
        if (decoding) {
            throw new IllegalStateException(name + " has no backward");
        }
        if (x == null || x.rows() != t) {
            throw new IllegalStateException(name + ": backward for " + t + " rows without a forward over them");
        }
        Backend be = dev.backend();
        if (bias != null) {
            be.addColumnSums(bias.grad(), dy);
        }
        Tensor ds = dy;
        Tensor dl = dy;
        if (gate != null) {
            Tensor g = gateValue.view(0, t);
            Tensor prod = scratch.view(0, t, out);
            // dL/dg = Σ_o dy·(s − l), with l = 0 without the low-rank part.
            if (rank > 0) {
                be.binary(BinaryOp.SUB, prod, sBuf.view(0, t, out), lBuf.view(0, t, out));
                be.binary(BinaryOp.MUL, prod, prod, dy);
            } else {
                be.binary(BinaryOp.MUL, prod, sBuf.view(0, t, out), dy);
            }
            be.reduceRows(ReduceOp.SUM, dGate.view(0, t), prod);
            Tensor dLogit = dGateLogit.view(0, t, 1);
            be.fill(dLogit, 0f);
            be.unaryBackward(UnaryOp.SIGMOID, dLogit.reshape(t), dGate.view(0, t), gateLogit.view(0, t));
            gate.backward(dx, dLogit);
            ds = sBuf.view(0, t, out);
            be.scaleRows(ds, dy, g);
            if (rank > 0) {
                dl = lBuf.view(0, t, out);
                be.binary(BinaryOp.SUB, dl, dy, ds);
            }
        }
        if (dx != null) {
            be.blockSparseLinearBackwardInput(dx, ds, sparse.value(), layout);
        }
        be.blockSparseLinearBackwardWeight(sparse.grad(), ds, x, layout);
        if (rank > 0) {
            Tensor dh = dhBuf.view(0, t, rank);
            lowU.backwardOverwrite(dh, dl);
            lowV.backward(dx, dh);
        }
    }

    private void release() {
        for (Tensor b : new Tensor[] {sBuf, lBuf, hBuf, dhBuf, gateLogit, gateValue, dGate, dGateLogit, scratch}) {
            if (b != null && !b.isClosed()) {
                b.close();
            }
        }
    }

    @Override
    public void close() {
        release();
        capacity = 0;
    }
}
