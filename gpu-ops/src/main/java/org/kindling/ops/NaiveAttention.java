package org.kindling.ops;

import java.util.ArrayList;
import java.util.List;

/**
 * Standard attention built from the backend's primitives: it materializes the Lq×Lk probability
 * matrix of every (sequence, head) in fp32 — S = scale·QKᵀ (+ mask), P = softmax(S), O = PV —
 * and keeps P for the backward. It is the same-precision baseline that FlashAttention's error is
 * judged against and the baseline of {@code kindling bench attention}; its memory grows as
 * Σ Lq·Lk·NH, which is the point of comparison.
 */
public final class NaiveAttention implements AutoCloseable {
    private final Device dev;
    private final Attention a;
    private final List<Tensor> probs = new ArrayList<>();
    private Attention.Batch batch;

    public NaiveAttention(Device dev, Attention a) {
        this.dev = dev;
        this.a = a;
    }

    /** out[Tq, NH, HS] = softmax(scale·QKᵀ + mask)·V; keeps the probabilities for {@link #backward}. */
    public void forward(Tensor out, Tensor q, Tensor k, Tensor v, Tensor cuSeqlensQ, Tensor cuSeqlensK) {
        batch = a.check(q, k, v, cuSeqlensQ, cuSeqlensK);
        releaseProbs();
        Backend be = dev.backend();
        int hs = a.headDim();
        int ldq = a.heads() * hs;
        int ldk = a.kvHeads() * hs;
        for (int b = 0; b < batch.sequences(); b++) {
            int lq = batch.lengthQ(b);
            int lk = batch.lengthK(b);
            Tensor bias = maskBias(b, lq, lk);
            try {
                for (int h = 0; h < a.heads(); h++) {
                    int g = h / a.group();
                    Tensor p = dev.allocate(DType.F32, lq, lk);
                    probs.add(p);
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
            } finally {
                if (bias != null) {
                    bias.close();
                }
            }
        }
    }

    /** dq, dk, dv += the gradients of the last {@link #forward} for upstream dout; releases the probabilities. */
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
                try (Tensor dp = dev.allocate(DType.F32, lq, lk); Tensor ds = dev.allocate(DType.F32, lq, lk)) {
                    be.gemm(Gemm.of(false, true, lq, lk, hs).leading(ldq, ldk, lk), dp, dO, rows(v, k0, lk, ldk, g * hs, hs));
                    be.softmaxBackward(ds, dp, p);
                    be.gemm(Gemm.of(false, false, lq, hs, lk).leading(lk, ldk, ldq).scaled(a.softmaxScale(), 1f),
                            rows(dq, q0, lq, ldq, h * hs, hs), ds, rows(k, k0, lk, ldk, g * hs, hs));
                    be.gemm(Gemm.of(true, false, lk, hs, lq).leading(lk, ldq, ldk).scaled(a.softmaxScale(), 1f),
                            rows(dk, k0, lk, ldk, g * hs, hs), ds, rows(q, q0, lq, ldq, h * hs, hs));
                }
            }
        }
        releaseProbs();
        batch = null;
    }

    /** The strided block of {@code count} rows × {@code width} starting at (row0, col) of a packed [T, ld] tensor. */
    private static Tensor rows(Tensor t, int row0, int count, int ld, int col, int width) {
        int span = count == 0 ? 0 : (count - 1) * ld + width;
        return t.reshape(t.numel()).view(row0 * ld + col, span);
    }

    /** 0 where query i attends key j, −∞ elsewhere; null when everything is attended. */
    private Tensor maskBias(int b, int lq, int lk) {
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

    private void releaseProbs() {
        probs.forEach(Tensor::close);
        probs.clear();
    }

    @Override
    public void close() {
        releaseProbs();
    }
}
