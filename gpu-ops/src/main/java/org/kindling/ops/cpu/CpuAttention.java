package org.kindling.ops.cpu;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.List;
import org.kindling.ops.Attention;
import org.kindling.ops.BlockMask;
import org.kindling.ops.DType;
import org.kindling.ops.Tensor;
import org.kindling.ops.Varlen;

/**
 * FlashAttention (Dao et al. 2022) on the CPU: exact attention tiled over query and key blocks of
 * {@link #T} rows with an online softmax, never holding a T×T score matrix beyond one tile per
 * thread. The forward keeps only O and the per-row log-sum-exp; the backward recomputes each
 * score tile from Q, K and LSE. Tile products go to BLAS; exp and the softmax bookkeeping are SIMD.
 *
 * <p>Parallelism: the forward runs one work item per (sequence, head, query tile); the backward one
 * per (sequence, KV head, key-tile segment), so dK and dV have a single writer. dQ rows are shared
 * by the segments of a head: segment 0 adds into dQ, the others into private buffers summed in
 * segment order afterwards. The segment count depends only on the shape and the thread count, and
 * each item's arithmetic does not depend on which thread runs it, so results are deterministic for
 * a given thread count. All scratch memory is allocated on the device, so its peak counts it.
 */
final class CpuAttention {
    static final int T = BlockMask.GRANULE;

    private final CpuDevice device;
    private final CpuPool pool;

    CpuAttention(CpuDevice device, CpuPool pool) {
        this.device = device;
        this.pool = pool;
    }

    /** The floats behind an F32 CPU tensor (its offset not applied). */
    static float[] f(Tensor t) {
        if (t.dtype() != DType.F32 || !(t.storage() instanceof CpuStorage s)) {
            throw new IllegalArgumentException("expected an F32 CPU tensor, got " + t);
        }
        return s.floats();
    }

    private static int tiles(int n) {
        return (n + T - 1) / T;
    }

    /** One call's operands and layout. */
    private static final class Call {
        final Attention a;
        final Attention.Batch batch;
        final float[] q;
        final float[] k;
        final float[] v;
        final int oq;
        final int ok;
        final int ov;
        final int nh;
        final int hs;
        final int ldq;
        final int ldk;
        final float scale;
        final BlockMask mask;

        Call(Attention a, Attention.Batch batch, Tensor q, Tensor k, Tensor v) {
            this.a = a;
            this.batch = batch;
            this.q = f(q);
            this.k = f(k);
            this.v = f(v);
            this.oq = q.offset();
            this.ok = k.offset();
            this.ov = v.offset();
            this.nh = a.heads();
            this.hs = a.headDim();
            this.ldq = a.heads() * a.headDim();
            this.ldk = a.kvHeads() * a.headDim();
            this.scale = a.softmaxScale();
            this.mask = a.mask();
        }

        boolean skipped(int qt, int kt) {
            return mask != null && !mask.allowed(qt * T / mask.blockSize(), kt * T / mask.blockSize());
        }

        /** Keys of tile kt that query row (qt·T + i) attends: a prefix of the tile's cols. */
        int allowedCols(int qt, int i, int kt, int cols, int off) {
            return a.causal() ? Math.max(0, Math.min(cols, qt * T + i + off - kt * T + 1)) : cols;
        }
    }

    // ---- forward ----

    void forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, Varlen cuQ, Varlen cuK, Attention a) {
        Attention.Batch batch = a.check(q, k, v, cuQ, cuK);
        a.checkOutputs(batch, out, lse);
        Call c = new Call(a, batch, q, k, v);
        float[] o = f(out);
        float[] l = f(lse);
        int oo = out.offset();
        int ol = lse.offset();
        List<int[]> items = new ArrayList<>();
        for (int b = 0; b < batch.sequences(); b++) {
            for (int qt = 0; qt < tiles(batch.lengthQ(b)); qt++) {
                for (int h = 0; h < c.nh; h++) {
                    items.add(new int[] {b, h, qt});
                }
            }
        }
        if (a.causal()) {
            items.sort(Comparator.comparingInt((int[] it) -> -it[2])); // long rows first: better balance
        }
        int scratch = T * T + T * c.hs + 2 * T;
        pool.runItems(device, items.size(), scratch, (it, ws, w) -> {
            int[] item = items.get(it);
            forwardItem(c, item[0], item[1], item[2], o, oo, l, ol, ws, w);
        });
    }

    private static void forwardItem(Call c, int b, int h, int qt, float[] out, int oo, float[] lse, int ol,
                                    float[] ws, int w) {
        Attention.Batch batch = c.batch;
        int hs = c.hs;
        int lq = batch.lengthQ(b);
        int lk = batch.lengthK(b);
        int off = lk - lq;
        int rows = Math.min(T, lq - qt * T);
        int g = h / c.a.group();
        int q0 = c.oq + (batch.cuQ()[b] + qt * T) * c.ldq + h * hs;
        int kEnd = c.a.causal() ? Math.min(lk, qt * T + rows + off) : lk;
        int sOff = w;
        int oAcc = w + T * T;
        int mOff = oAcc + T * hs;
        int lOff = mOff + T;
        Arrays.fill(ws, oAcc, oAcc + rows * hs, 0f);
        Arrays.fill(ws, mOff, mOff + rows, Float.NEGATIVE_INFINITY);
        Arrays.fill(ws, lOff, lOff + rows, 0f);
        for (int kt = 0; kt * T < kEnd; kt++) {
            if (c.skipped(qt, kt)) {
                continue;
            }
            int cols = Math.min(T, lk - kt * T);
            int k0 = c.ok + (batch.cuK()[b] + kt * T) * c.ldk + g * hs;
            int v0 = c.ov + (batch.cuK()[b] + kt * T) * c.ldk + g * hs;
            Blas.sgemm(false, true, rows, cols, hs, c.scale, c.q, q0, c.ldq, c.k, k0, c.ldk, 0f, ws, sOff, T);
            for (int i = 0; i < rows; i++) {
                int row = sOff + i * T;
                int allowed = c.allowedCols(qt, i, kt, cols, off);
                if (allowed == 0) {
                    Arrays.fill(ws, row, row + cols, 0f);
                    continue;
                }
                float mOld = ws[mOff + i];
                float mNew = Math.max(mOld, VecMath.max(ws, row, allowed));
                float corr = VecMath.exp(mOld - mNew);
                float sum = VecMath.expShiftSum(ws, row, allowed, mNew);
                Arrays.fill(ws, row + allowed, row + cols, 0f);
                ws[lOff + i] = ws[lOff + i] * corr + sum;
                if (corr != 1f) {
                    VecMath.scale(ws, oAcc + i * hs, hs, corr);
                }
                ws[mOff + i] = mNew;
            }
            Blas.sgemm(false, false, rows, hs, cols, 1f, ws, sOff, T, c.v, v0, c.ldk, 1f, ws, oAcc, hs);
        }
        int totalQ = batch.totalQ();
        for (int i = 0; i < rows; i++) {
            int r = batch.cuQ()[b] + qt * T + i;
            int dst = oo + r * c.ldq + h * hs;
            float li = ws[lOff + i];
            if (li == 0f) {
                Arrays.fill(out, dst, dst + hs, 0f);
                lse[ol + h * totalQ + r] = Float.NEGATIVE_INFINITY;
                continue;
            }
            float inv = 1f / li;
            int src = oAcc + i * hs;
            for (int d = 0; d < hs; d++) {
                out[dst + d] = ws[src + d] * inv;
            }
            lse[ol + h * totalQ + r] = (float) (ws[mOff + i] + Math.log(li));
        }
    }

    // ---- backward ----

    void backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,
                  Varlen cuQ, Varlen cuK, Attention a) {
        Attention.Batch batch = a.check(q, k, v, cuQ, cuK);
        a.checkOutputs(batch, out, lse);
        a.checkOutputs(batch, dout, lse);
        a.checkOutputs(batch, dq, lse);
        if (dk.numel() != k.numel() || dv.numel() != v.numel()) {
            throw new IllegalArgumentException("attention dk " + dk + " and dv " + dv + " must be shaped like k " + k);
        }
        Call c = new Call(a, batch, q, k, v);
        int nh = c.nh;
        int hs = c.hs;
        int totalQ = batch.totalQ();
        float[] dO = f(dout);
        float[] o = f(out);
        float[] l = f(lse);
        int odo = dout.offset();
        int oo = out.offset();
        int ol = lse.offset();
        int maxKTiles = tiles(batch.maxK());
        int groups = batch.sequences() * a.kvHeads();
        int segments = Math.max(1, Math.min(maxKTiles, (2 * pool.threads() + groups - 1) / groups));
        try (Tensor rowDot = device.scratch(DType.F32, nh, totalQ);
             Tensor dqPartial = device.scratch(DType.F32, segments - 1, totalQ * nh * hs)) {
            float[] di = f(rowDot);
            // D_i = dO_i·O_i, the softmax-backward row term, from the same fp32 GEMM tiles that form
            // dP_ij = dO_i·V_j: where a row attends one key (O_i = V_j) dP − D then cancels exactly,
            // as in exact arithmetic; a D rounded from double would leave dP's rounding error behind.
            List<int[]> rowTiles = new ArrayList<>();
            for (int b = 0; b < batch.sequences(); b++) {
                for (int qt = 0; qt < tiles(batch.lengthQ(b)); qt++) {
                    for (int h = 0; h < nh; h++) {
                        rowTiles.add(new int[] {b, qt, h});
                    }
                }
            }
            pool.runItems(device, rowTiles.size(), T * T, (it, ws, w) -> {
                int[] tile = rowTiles.get(it);
                int h = tile[2];
                int rows = Math.min(T, batch.lengthQ(tile[0]) - tile[1] * T);
                int qRow = batch.cuQ()[tile[0]] + tile[1] * T;
                Blas.sgemm(false, true, rows, rows, hs, 1f, dO, odo + qRow * c.ldq + h * hs, c.ldq, o, oo + qRow * c.ldq + h * hs,
                        c.ldq, 0f, ws, w, T);
                for (int i = 0; i < rows; i++) {
                    di[h * totalQ + qRow + i] = ws[w + i * T + i];
                }
            });
            float[] dqa = f(dq);
            float[] part = f(dqPartial);
            float[] dka = f(dk);
            float[] dva = f(dv);
            int odk = dk.offset();
            int odv = dv.offset();
            List<int[]> items = new ArrayList<>();
            for (int s = 0; s < segments; s++) {
                for (int b = 0; b < batch.sequences(); b++) {
                    if (s < tiles(batch.lengthK(b))) {
                        for (int g = 0; g < a.kvHeads(); g++) {
                            items.add(new int[] {b, g, s});
                        }
                    }
                }
            }
            int scratch = 2 * T * T + 2 * T * hs;
            pool.runItems(device, items.size(), scratch, (it, ws, w) -> {
                int[] item = items.get(it);
                int s = item[2];
                float[] dst = s == 0 ? dqa : part;
                int dstOff = s == 0 ? dq.offset() : (s - 1) * totalQ * nh * hs;
                backwardItem(c, item[0], item[1], s, segments, dO, odo, l, ol, di, dst, dstOff, dka, odk, dva, odv, ws, w);
            });
            if (segments > 1) {
                int n = totalQ * nh * hs;
                int odq = dq.offset();
                pool.parallelFor(n, 1 << 14, (lo, hi) -> {
                    for (int s = 1; s < segments; s++) {
                        VecMath.addTo(dqa, odq + lo, part, (s - 1) * n + lo, hi - lo);
                    }
                });
            }
        }
    }

    private static void backwardItem(Call c, int b, int g, int seg, int segments, float[] dO, int odo, float[] lse,
                                     int ol, float[] di, float[] dq, int odq, float[] dk, int odk, float[] dv, int odv,
                                     float[] ws, int w) {
        Attention.Batch batch = c.batch;
        int hs = c.hs;
        int lq = batch.lengthQ(b);
        int lk = batch.lengthK(b);
        int off = lk - lq;
        int totalQ = batch.totalQ();
        int pOff = w;
        int dpOff = w + T * T;
        int dkOff = dpOff + T * T;
        int dvOff = dkOff + T * hs;
        int qTiles = tiles(lq);
        for (int kt = seg; kt * T < lk; kt += segments) {
            int cols = Math.min(T, lk - kt * T);
            int kRow = batch.cuK()[b] + kt * T;
            int k0 = c.ok + kRow * c.ldk + g * hs;
            int v0 = c.ov + kRow * c.ldk + g * hs;
            Arrays.fill(ws, dkOff, dkOff + 2 * T * hs, 0f);
            int qtStart = c.a.causal() ? Math.max(0, kt * T - off) / T : 0;
            for (int h = g * c.a.group(); h < (g + 1) * c.a.group(); h++) {
                for (int qt = qtStart; qt < qTiles; qt++) {
                    if (c.skipped(qt, kt)) {
                        continue;
                    }
                    int rows = Math.min(T, lq - qt * T);
                    int qRow = batch.cuQ()[b] + qt * T;
                    int q0 = c.oq + qRow * c.ldq + h * hs;
                    int do0 = odo + qRow * c.ldq + h * hs;
                    Blas.sgemm(false, true, rows, cols, hs, c.scale, c.q, q0, c.ldq, c.k, k0, c.ldk, 0f, ws, pOff, T);
                    for (int i = 0; i < rows; i++) {
                        int row = pOff + i * T;
                        float lseI = lse[ol + h * totalQ + qRow + i];
                        int allowed = lseI == Float.NEGATIVE_INFINITY ? 0 : c.allowedCols(qt, i, kt, cols, off);
                        VecMath.expShift(ws, row, allowed, lseI);
                        Arrays.fill(ws, row + allowed, row + cols, 0f);
                    }
                    // dV += Pᵀ·dO
                    Blas.sgemm(true, false, cols, hs, rows, 1f, ws, pOff, T, dO, do0, c.ldq, 1f, ws, dvOff, hs);
                    // dP = dO·Vᵀ, then dS = P ⊙ (dP − D) in place of P
                    Blas.sgemm(false, true, rows, cols, hs, 1f, dO, do0, c.ldq, c.v, v0, c.ldk, 0f, ws, dpOff, T);
                    for (int i = 0; i < rows; i++) {
                        VecMath.mulShifted(ws, pOff + i * T, ws, dpOff + i * T, cols, di[h * totalQ + qRow + i]);
                    }
                    // dK += scale·dSᵀ·Q; dQ += scale·dS·K
                    Blas.sgemm(true, false, cols, hs, rows, c.scale, ws, pOff, T, c.q, q0, c.ldq, 1f, ws, dkOff, hs);
                    Blas.sgemm(false, false, rows, hs, cols, c.scale, ws, pOff, T, c.k, k0, c.ldk, 1f, dq,
                            odq + qRow * c.ldq + h * hs, c.ldq);
                }
            }
            for (int j = 0; j < cols; j++) {
                int dst = (kRow + j) * c.ldk + g * hs;
                VecMath.addTo(dk, odk + dst, ws, dkOff + j * hs, hs);
                VecMath.addTo(dv, odv + dst, ws, dvOff + j * hs, hs);
            }
        }
    }
}
