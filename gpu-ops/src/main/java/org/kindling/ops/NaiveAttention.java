package org.kindling.ops;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * Standard attention built from the backend's primitives: it materializes the Lq×Lk probability
 * matrix of every (sequence, head) in fp32 — S = scale·QKᵀ (+ mask), P = softmax(S), O = PV —
 * and keeps P for the backward. It is the same-precision baseline that FlashAttention's error is
 * judged against and the baseline of {@code kindling bench attention}; its memory grows as
 * Σ Lq·Lk·NH, which is the point of comparison.
 *
 * <p>Its buffers (P of every head, the mask biases, and dP/dS scratch for one head) are allocated by
 * the first call for a sequence layout and reused while the layout stays the same, so that a timed
 * call measures the algorithm rather than allocation and host-side mask building. They are held
 * until {@link #close}.
 */
public final class NaiveAttention implements AutoCloseable {
    private final Device dev;
    private final Attention a;
    private final List<Tensor> probs = new ArrayList<>();
    private final List<Tensor> biases = new ArrayList<>();
    private int[] layoutQ;
    private int[] layoutK;
    private Tensor scratchDp;
    private Tensor scratchDs;
    private Attention.Batch batch;

    public NaiveAttention(Device dev, Attention a) {
        this.dev = dev;
        this.a = a;
    }

    /** out[Tq, NH, HS] = softmax(scale·QKᵀ + mask)·V; keeps the probabilities for {@link #backward}. */
    public void forward(Tensor out, Tensor q, Tensor k, Tensor v, Varlen cuSeqlensQ, Varlen cuSeqlensK) {
        batch = a.check(q, k, v, cuSeqlensQ, cuSeqlensK);
        allocate(batch);
        Backend be = dev.backend();
        int hs = a.headDim();
        int ldq = a.heads() * hs;
        int ldk = a.kvHeads() * hs;
        for (int b = 0; b < batch.sequences(); b++) {
            int lq = batch.lengthQ(b);
            int lk = batch.lengthK(b);
            Tensor bias = biases.get(b);
            for (int h = 0; h < a.heads(); h++) {
                int g = h / a.group();
                Tensor p = probs.get(b * a.heads() + h);
                if (lq == 0 || lk == 0) {
                    continue;
                }
                be.gemm(Gemm.of(false, true, lq, lk, hs).leading(ldq, ldk, lk).scaled(a.softmaxScale(), 0f), p,
                        rows(q, batch.cuQ()[b], lq, ldq, h * hs, hs), rows(k, batch.cuK()[b], lk, ldk, g * hs, hs));
                if (bias != null) {
                    be.binary(BinaryOp.ADD, p, p, bias);
                }
                be.softmaxForward(p, p);
                be.gemm(Gemm.of(false, false, lq, hs, lk).leading(lk, ldk, ldq), rows(out, batch.cuQ()[b], lq, ldq, h * hs, hs),
                        p, rows(v, batch.cuK()[b], lk, ldk, g * hs, hs));
            }
        }
    }

    /** dq, dk, dv += the gradients of the last {@link #forward} for upstream dout. */
    public void backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v) {
        if (batch == null) {
            throw new IllegalStateException("backward before forward");
        }
        Backend be = dev.backend();
        int hs = a.headDim();
        int ldq = a.heads() * hs;
        int ldk = a.kvHeads() * hs;
        int next = 0;
        for (int b = 0; b < batch.sequences(); b++) {
            int lq = batch.lengthQ(b);
            int lk = batch.lengthK(b);
            int q0 = batch.cuQ()[b];
            int k0 = batch.cuK()[b];
            for (int h = 0; h < a.heads(); h++) {
                Tensor p = probs.get(next++);
                if (lq == 0 || lk == 0) {
                    continue;
                }
                int g = h / a.group();
                Tensor dO = rows(dout, q0, lq, ldq, h * hs, hs);
                be.gemm(Gemm.of(true, false, lk, hs, lq).leading(lk, ldq, ldk).scaled(1f, 1f),
                        rows(dv, k0, lk, ldk, g * hs, hs), p, dO);
                Tensor dp = scratchDp.view(0, lq, lk);
                Tensor ds = scratchDs.view(0, lq, lk);
                be.gemm(Gemm.of(false, true, lq, lk, hs).leading(ldq, ldk, lk), dp, dO, rows(v, k0, lk, ldk, g * hs, hs));
                be.fill(ds, 0f); // softmaxBackward accumulates, and the scratch holds the previous head's dS
                be.softmaxBackward(ds, dp, p);
                be.gemm(Gemm.of(false, false, lq, hs, lk).leading(lk, ldk, ldq).scaled(a.softmaxScale(), 1f),
                        rows(dq, q0, lq, ldq, h * hs, hs), ds, rows(k, k0, lk, ldk, g * hs, hs));
                be.gemm(Gemm.of(true, false, lk, hs, lq).leading(lk, ldq, ldk).scaled(a.softmaxScale(), 1f),
                        rows(dk, k0, lk, ldk, g * hs, hs), ds, rows(q, q0, lq, ldq, h * hs, hs));
            }
        }
        batch = null;
    }

    /** P for every (sequence, head), the mask biases and the dP/dS scratch for {@code layout}, kept while it repeats. */
    private void allocate(Attention.Batch layout) {
        if (Arrays.equals(layout.cuQ(), layoutQ) && Arrays.equals(layout.cuK(), layoutK)) {
            return;
        }
        release();
        int largest = 0;
        for (int b = 0; b < layout.sequences(); b++) {
            int lq = layout.lengthQ(b);
            int lk = layout.lengthK(b);
            largest = Math.max(largest, lq * lk);
            biases.add(maskBias(lq, lk));
            for (int h = 0; h < a.heads(); h++) {
                probs.add(dev.allocate(DType.F32, lq, lk));
            }
        }
        scratchDp = dev.allocate(DType.F32, largest);
        scratchDs = dev.allocate(DType.F32, largest);
        layoutQ = layout.cuQ().clone();
        layoutK = layout.cuK().clone();
    }

    /** The strided block of {@code count} rows × {@code width} starting at (row0, col) of a packed [T, ld] tensor. */
    private static Tensor rows(Tensor t, int row0, int count, int ld, int col, int width) {
        int span = count == 0 ? 0 : (count - 1) * ld + width;
        return t.reshape(t.numel()).view(row0 * ld + col, span);
    }

    /** 0 where query i attends key j, −∞ elsewhere; null when everything is attended. */
    private Tensor maskBias(int lq, int lk) {
        if (!a.causal() && a.mask() == null) {
            return null;
        }
        float[] bias = new float[lq * lk];
        for (int i = 0; i < lq; i++) {
            for (int j = 0; j < lk; j++) {
                bias[i * lk + j] = a.attends(i, j, lq, lk) ? 0f : Float.NEGATIVE_INFINITY;
            }
        }
        return dev.fromFloats(bias, lq * lk);
    }

    private void release() {
        probs.forEach(Tensor::close);
        probs.clear();
        biases.stream().filter(java.util.Objects::nonNull).forEach(Tensor::close);
        biases.clear();
        for (Tensor t : new Tensor[] {scratchDp, scratchDs}) {
            if (t != null) {
                t.close();
            }
        }
        scratchDp = null;
        scratchDs = null;
        layoutQ = null;
        layoutK = null;
    }

    @Override
    public void close() {
        release();
        batch = null;
    }
}
