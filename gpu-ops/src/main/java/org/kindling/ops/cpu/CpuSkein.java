package org.kindling.ops.cpu;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.kindling.ops.DType;
import org.kindling.ops.Skein;
import org.kindling.ops.Tensor;
import org.kindling.ops.Varlen;

/**
 * {@link Skein}'s bidirectional sketched attention on the CPU in float32: the fast twin of the
 * record's double loops, which stay the reference. The draws are the reference's, bit for bit
 * ({@link Skein#draws} on double copies of one head's rows); around them every product is a GEMM:
 * per (sequence, head) the sampled key and value rows are gathered once into [s, HS], each tile of
 * {@link #R} query rows takes L = Q·Ksᵀ, the adaptive row terms and O = e^L·Vs, and the pilot rows
 * are exact attention over the whole sequence, so a call costs O(T·(s + p)·HS) per head.
 *
 * <p>Parallelism: the forward runs one work item per (sequence, head, row tile) and one per
 * (sequence, head) for the pilot rows, which write disjoint rows. The backward splits each head's
 * tiles into segments whose sampled-row gradients go to private buffers; then one item per
 * (sequence, head) does the pilot rows' exact backward and adds the segments' buffers in segment
 * order into dK and dV. The segment count depends only on the shape and the thread count, so
 * results are deterministic for a given thread count.
 */
final class CpuSkein {
    /** Query rows per tile. */
    static final int R = 128;

    private final CpuDevice device;
    private final CpuPool pool;

    CpuSkein(CpuDevice device, CpuPool pool) {
        this.device = device;
        this.pool = pool;
    }

    /** One (sequence, head): its draws and its sampled key and value rows, gathered [s, HS]. */
    private static final class Head {
        final int b;
        final int h;
        final int base;
        final int n;
        int[] pilots;
        int[] sample;
        boolean[] isPilot;
        float[] rest;
        float[] ks;
        float[] vs;
        /** Unsampled columns, modelled by the adaptive term when this is set. */
        int unsampled;
        boolean model;
        int segments;
        /** This head's first segment among all heads'. */
        int firstSegment;

        Head(int b, int h, int base, int n) {
            this.b = b;
            this.h = h;
            this.base = base;
            this.n = n;
        }

        int tiles() {
            return (n + R - 1) / R;
        }
    }

    /** One call's operands and layout. */
    private static final class Call {
        final Skein s;
        final float[] q;
        final float[] k;
        final float[] v;
        final int oq;
        final int ok;
        final int ov;
        final int hs;
        final int ld;
        final float scale;
        final List<Head> heads = new ArrayList<>();

        Call(Skein s, Tensor q, Tensor k, Tensor v, int[] cu) {
            this.s = s;
            this.q = CpuAttention.f(q);
            this.k = CpuAttention.f(k);
            this.v = CpuAttention.f(v);
            this.oq = q.offset();
            this.ok = k.offset();
            this.ov = v.offset();
            this.hs = s.headDim();
            this.ld = s.heads() * s.headDim();
            this.scale = (float) (1 / Math.sqrt(hs));
            for (int b = 0; b + 1 < cu.length; b++) {
                int n = cu[b + 1] - cu[b];
                for (int h = 0; h < s.heads() && n > 0; h++) {
                    heads.add(new Head(b, h, cu[b], n));
                }
            }
        }

        int maxN() {
            return heads.stream().mapToInt(x -> x.n).max().orElse(0);
        }

        int maxPilots() {
            return Math.min(s.pilot(), maxN());
        }

        int maxSamples() {
            return Math.min(s.samples(), maxN());
        }

        /** Element e of row r (of its sequence) of head x in an operand laid out like q. */
        int at(Head x, int r) {
            return (x.base + r) * ld + x.h * hs;
        }
    }

    /** Draws every head (in parallel) and gathers its sampled rows. */
    private Call plan(Skein s, Tensor q, Tensor k, Tensor v, int[] cu, long seed) {
        Call c = new Call(s, q, k, v, cu);
        int hs = c.hs;
        pool.parallelFor(c.heads.size(), 1, (lo, hi) -> {
            for (int i = lo; i < hi; i++) {
                Head x = c.heads.get(i);
                Skein.Draws d = s.draws(rows(c.q, c.oq, c, x), rows(c.k, c.ok, c, x), rows(c.v, c.ov, c, x), x.n, x.h, x.b, seed);
                x.pilots = d.pilots();
                x.sample = d.sample();
                x.isPilot = new boolean[x.n];
                for (int p : x.pilots) {
                    x.isPilot[p] = true;
                }
                x.rest = new float[hs];
                for (int e = 0; e < hs; e++) {
                    x.rest[e] = (float) d.rest()[e];
                }
                x.unsampled = x.n - x.sample.length;
                x.model = s.adaptive() && x.unsampled > 0 && x.sample.length > 0;
                x.ks = gather(c.k, c.ok, c, x, x.sample);
                x.vs = gather(c.v, c.ov, c, x, x.sample);
            }
        });
        return c;
    }

    /** Head x's rows of an operand as doubles [n, HS]. */
    private static double[] rows(float[] a, int off, Call c, Head x) {
        double[] d = new double[x.n * c.hs];
        for (int r = 0; r < x.n; r++) {
            int o = off + c.at(x, r);
            for (int e = 0; e < c.hs; e++) {
                d[r * c.hs + e] = a[o + e];
            }
        }
        return d;
    }

    /** Head x's rows idx of an operand, packed [idx.length, HS]. */
    private static float[] gather(float[] a, int off, Call c, Head x, int[] idx) {
        float[] g = new float[idx.length * c.hs];
        for (int i = 0; i < idx.length; i++) {
            System.arraycopy(a, off + c.at(x, idx[i]), g, i * c.hs, c.hs);
        }
        return g;
    }

    // ---- forward ----

    void forward(Tensor out, Tensor q, Tensor k, Tensor v, Varlen cuSeqlens, Skein s, long seed) {
        Call c = plan(s, q, k, v, s.packed(cuSeqlens, out, q, k, v), seed);
        float[] o = CpuAttention.f(out);
        int oo = out.offset();
        List<int[]> items = new ArrayList<>();
        for (int i = 0; i < c.heads.size(); i++) {
            Head x = c.heads.get(i);
            if (x.pilots.length > 0) {
                items.add(new int[] {i, -1});
            }
            for (int t = 0; t < x.tiles(); t++) {
                items.add(new int[] {i, t});
            }
        }
        int hs = c.hs;
        int tile = R * c.maxSamples() + R * hs + 2 * R;
        int pilot = c.maxPilots() * (c.maxN() + 2 * hs);
        pool.runItems(device, items.size(), Math.max(tile, pilot), (it, ws, w) -> {
            int[] item = items.get(it);
            Head x = c.heads.get(item[0]);
            if (item[1] < 0) {
                pilotForward(c, x, o, oo, ws, w);
            } else {
                tileForward(c, x, item[1], o, oo, ws, w);
            }
        });
    }

    /**
     * The sketched rows of tile t of head x before normalisation: e^{l − max} in ws[el..] [rows, s],
     * per row the model weight e^{mean − max} in ws[em..] and the normaliser in ws[den..], and the
     * row output (normalised) in ws[ot..] [rows, HS].
     */
    private static void tileRows(Call c, Head x, int r0, int rows, float[] ws, int el, int em, int den, int ot) {
        int hs = c.hs;
        int ns = x.sample.length;
        Blas.sgemm(false, true, rows, ns, hs, c.scale, c.q, c.oq + c.at(x, r0), c.ld, x.ks, 0, hs, 0f, ws, el, ns);
        for (int i = 0; i < rows; i++) {
            int row = el + i * ns;
            float max = VecMath.max(ws, row, ns);
            float e = x.model ? (float) Math.exp(VecMath.sum(ws, row, ns) / ns - max) : 0f;
            ws[em + i] = e;
            ws[den + i] = VecMath.expShiftSum(ws, row, ns, max) + e * x.unsampled;
        }
        Blas.sgemm(false, false, rows, hs, ns, 1f, ws, el, ns, x.vs, 0, hs, 0f, ws, ot, hs);
        for (int i = 0; i < rows; i++) {
            int row = ot + i * hs;
            float e = ws[em + i];
            float inv = 1f / ws[den + i];
            for (int d = 0; d < hs; d++) {
                ws[row + d] = (ws[row + d] + e * x.rest[d]) * inv;
            }
        }
    }

    private static void tileForward(Call c, Head x, int t, float[] out, int oo, float[] ws, int w) {
        int hs = c.hs;
        int r0 = t * R;
        int rows = Math.min(R, x.n - r0);
        int el = w;
        int ot = el + R * x.sample.length;
        int em = ot + R * hs;
        int den = em + R;
        tileRows(c, x, r0, rows, ws, el, em, den, ot);
        for (int i = 0; i < rows; i++) {
            if (!x.isPilot[r0 + i]) {
                System.arraycopy(ws, ot + i * hs, out, oo + c.at(x, r0 + i), hs);
            }
        }
    }

    /** Exact softmax rows of the pilot queries (packed in ws[qp..] [p, HS]) over all keys of head x into ws[pr..] [p, n]. */
    private static void pilotProbs(Call c, Head x, float[] ws, int qp, int pr) {
        int p = x.pilots.length;
        int n = x.n;
        Blas.sgemm(false, true, p, n, c.hs, c.scale, ws, qp, c.hs, c.k, c.ok + c.at(x, 0), c.ld, 0f, ws, pr, n);
        for (int i = 0; i < p; i++) {
            int row = pr + i * n;
            float sum = VecMath.expShiftSum(ws, row, n, VecMath.max(ws, row, n));
            VecMath.scale(ws, row, n, 1f / sum);
        }
    }

    private static void gatherInto(float[] a, int off, Call c, Head x, int[] idx, float[] dst, int d) {
        for (int i = 0; i < idx.length; i++) {
            System.arraycopy(a, off + c.at(x, idx[i]), dst, d + i * c.hs, c.hs);
        }
    }

    private static void pilotForward(Call c, Head x, float[] out, int oo, float[] ws, int w) {
        int hs = c.hs;
        int p = x.pilots.length;
        int qp = w;
        int op = qp + p * hs;
        int pr = op + p * hs;
        gatherInto(c.q, c.oq, c, x, x.pilots, ws, qp);
        pilotProbs(c, x, ws, qp, pr);
        Blas.sgemm(false, false, p, hs, x.n, 1f, ws, pr, x.n, c.v, c.ov + c.at(x, 0), c.ld, 0f, ws, op, hs);
        for (int i = 0; i < p; i++) {
            System.arraycopy(ws, op + i * hs, out, oo + c.at(x, x.pilots[i]), hs);
        }
    }

    // ---- backward ----

    void backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Varlen cuSeqlens, Skein s,
                  long seed) {
        Call c = plan(s, q, k, v, s.packed(cuSeqlens, dq, dk, dv, dout, q, k, v), seed);
        float[] gq = CpuAttention.f(dq);
        float[] gk = CpuAttention.f(dk);
        float[] gv = CpuAttention.f(dv);
        float[] g = CpuAttention.f(dout);
        int odq = dq.offset();
        int odk = dk.offset();
        int odv = dv.offset();
        int og = dout.offset();
        int hs = c.hs;
        int ms = c.maxSamples();
        // Enough segments to keep every thread busy however few heads there are.
        int perHead = Math.max(1, (2 * pool.threads() + c.heads.size() - 1) / Math.max(1, c.heads.size()));
        int segments = 0;
        List<int[]> items = new ArrayList<>();
        for (int i = 0; i < c.heads.size(); i++) {
            Head x = c.heads.get(i);
            x.segments = Math.min(perHead, x.tiles());
            x.firstSegment = segments;
            for (int sg = 0; sg < x.segments; sg++) {
                items.add(new int[] {i, sg});
            }
            segments += x.segments;
        }
        int part = 2 * ms * hs + hs;
        try (Tensor parts = device.scratch(DType.F32, Math.max(1, segments), part)) {
            float[] pa = CpuAttention.f(parts);
            int po = parts.offset();
            int tile = 2 * R * ms + 3 * R * hs + 4 * R;
            pool.runItems(device, items.size(), tile, (it, ws, w) -> {
                int[] item = items.get(it);
                Head x = c.heads.get(item[0]);
                int sg = item[1];
                int t0 = (int) ((long) x.tiles() * sg / x.segments);
                int t1 = (int) ((long) x.tiles() * (sg + 1) / x.segments);
                int buf = po + (x.firstSegment + sg) * part;
                for (int t = t0; t < t1; t++) {
                    tileBackward(c, x, t, gq, odq, g, og, pa, buf, ws, w);
                }
            });
            int pilot = c.maxPilots() * (2 * c.maxN() + 4 * hs) + part;
            pool.runItems(device, c.heads.size(), pilot, (it, ws, w) -> {
                Head x = c.heads.get(it);
                // ws[w..w+part) sums the segments' buffers; the pilot rows' scratch follows it.
                if (x.pilots.length > 0) {
                    pilotBackward(c, x, gq, odq, gk, odk, gv, odv, g, og, ws, w + part);
                }
                finish(c, x, gk, odk, gv, odv, pa, po, part, ws, w);
            });
        }
    }

    /**
     * Tile t of head x: dq of its sketched rows, and into the segment's buffer at pa[buf..] the
     * sampled keys' and values' gradients [s, HS] each and the sum over rows of e^{m}·dN [HS] that
     * every unsampled value row receives. Pilot rows count as rows with zero upstream gradient.
     */
    private static void tileBackward(Call c, Head x, int t, float[] gq, int odq, float[] g, int og, float[] pa, int buf,
                                     float[] ws, int w) {
        int hs = c.hs;
        int ns = x.sample.length;
        int r0 = t * R;
        int rows = Math.min(R, x.n - r0);
        int el = w;
        int dl = el + R * ns;
        int ot = dl + R * ns;
        int dn = ot + R * hs;
        int em = dn + R * hs;
        int den = em + R;
        int dd = den + R;
        int dm = dd + R;
        tileRows(c, x, r0, rows, ws, el, em, den, ot);
        int dks = buf;
        int dvs = buf + ns * hs;
        int gg = dvs + ns * hs;
        for (int i = 0; i < rows; i++) {
            int row = dn + i * hs;
            if (x.isPilot[r0 + i]) {
                Arrays.fill(ws, row, row + hs, 0f);
                ws[dd + i] = 0f;
                ws[dm + i] = 0f;
                continue;
            }
            // dN = g/D, dD = −dN·o; the model term's weight e^{m} gets dN·R + dD·u, spread over the samples' mean.
            float inv = 1f / ws[den + i];
            int gr = og + c.at(x, r0 + i);
            float ddi = 0f;
            float dr = 0f;
            for (int d = 0; d < hs; d++) {
                float v = g[gr + d] * inv;
                ws[row + d] = v;
                ddi -= v * ws[ot + i * hs + d];
                dr += v * x.rest[d];
            }
            ws[dd + i] = ddi;
            float e = ws[em + i];
            ws[dm + i] = x.model ? e * (ddi * x.unsampled + dr) / ns : 0f;
            if (x.model) {
                for (int d = 0; d < hs; d++) {
                    pa[gg + d] += e * ws[row + d];
                }
            }
        }
        Blas.sgemm(false, true, rows, ns, hs, 1f, ws, dn, hs, x.vs, 0, hs, 0f, ws, dl, ns);
        Blas.sgemm(true, false, ns, hs, rows, 1f, ws, el, ns, ws, dn, hs, 1f, pa, dvs, hs);
        for (int i = 0; i < rows; i++) {
            int row = dl + i * ns;
            int er = el + i * ns;
            float ddi = ws[dd + i];
            float dmi = ws[dm + i];
            for (int j = 0; j < ns; j++) {
                ws[row + j] = ws[er + j] * (ws[row + j] + ddi) + dmi;
            }
        }
        Blas.sgemm(false, false, rows, hs, ns, c.scale, ws, dl, ns, x.ks, 0, hs, 1f, gq, odq + c.at(x, r0), c.ld);
        Blas.sgemm(true, false, ns, hs, rows, c.scale, ws, dl, ns, c.q, c.oq + c.at(x, r0), c.ld, 1f, pa, dks, hs);
    }

    /** The pilot rows' exact attention backward: dq of those rows, dk and dv of every key row of head x. */
    private static void pilotBackward(Call c, Head x, float[] gq, int odq, float[] gk, int odk, float[] gv, int odv,
                                      float[] g, int og, float[] ws, int w) {
        int hs = c.hs;
        int p = x.pilots.length;
        int n = x.n;
        int qp = w;
        int gp = qp + p * hs;
        int op = gp + p * hs;
        int dqp = op + p * hs;
        int pr = dqp + p * hs;
        int dp = pr + p * n;
        gatherInto(c.q, c.oq, c, x, x.pilots, ws, qp);
        gatherInto(g, og, c, x, x.pilots, ws, gp);
        pilotProbs(c, x, ws, qp, pr);
        Blas.sgemm(false, false, p, hs, n, 1f, ws, pr, n, c.v, c.ov + c.at(x, 0), c.ld, 0f, ws, op, hs);
        // dS = P ⊙ (G·Vᵀ − rowsum(G ⊙ O)), the softmax backward.
        Blas.sgemm(false, true, p, n, hs, 1f, ws, gp, hs, c.v, c.ov + c.at(x, 0), c.ld, 0f, ws, dp, n);
        for (int i = 0; i < p; i++) {
            float di = (float) VecMath.dot(ws, gp + i * hs, ws, op + i * hs, hs);
            VecMath.mulShifted(ws, pr + i * n, ws, dp + i * n, n, di);
        }
        int dsm = pr;
        Blas.sgemm(false, false, p, hs, n, c.scale, ws, dsm, n, c.k, c.ok + c.at(x, 0), c.ld, 0f, ws, dqp, hs);
        for (int i = 0; i < p; i++) {
            VecMath.addTo(gq, odq + c.at(x, x.pilots[i]), ws, dqp + i * hs, hs);
        }
        Blas.sgemm(true, false, n, hs, p, c.scale, ws, dsm, n, ws, qp, hs, 1f, gk, odk + c.at(x, 0), c.ld);
        // dV needs P itself, which the softmax backward overwrote: recompute it.
        pilotProbs(c, x, ws, qp, pr);
        Blas.sgemm(true, false, n, hs, p, 1f, ws, pr, n, ws, gp, hs, 1f, gv, odv + c.at(x, 0), c.ld);
    }

    /**
     * Head x's segment buffers summed in segment order (into ws[sum..]) and added to the sampled
     * rows of dk and dv, and to every unsampled row of dv.
     */
    private static void finish(Call c, Head x, float[] gk, int odk, float[] gv, int odv, float[] pa, int po, int part,
                               float[] ws, int sum) {
        int hs = c.hs;
        int ns = x.sample.length;
        int size = 2 * ns * hs + hs;
        Arrays.fill(ws, sum, sum + size, 0f);
        for (int sg = 0; sg < x.segments; sg++) {
            VecMath.addTo(ws, sum, pa, po + (x.firstSegment + sg) * part, size);
        }
        for (int j = 0; j < ns; j++) {
            VecMath.addTo(gk, odk + c.at(x, x.sample[j]), ws, sum + j * hs, hs);
            VecMath.addTo(gv, odv + c.at(x, x.sample[j]), ws, sum + (ns + j) * hs, hs);
        }
        if (!x.model) {
            return;
        }
        boolean[] taken = new boolean[x.n];
        for (int j : x.sample) {
            taken[j] = true;
        }
        int gg = sum + 2 * ns * hs;
        for (int j = 0; j < x.n; j++) {
            if (!taken[j]) {
                VecMath.addTo(gv, odv + c.at(x, j), ws, gg, hs);
            }
        }
    }
}
