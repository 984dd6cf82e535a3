package org.kindling.models.nn;

import org.kindling.ops.Backend;
import org.kindling.ops.BinaryOp;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;

/**
 * A true butterfly linear y[T, OC] = B(x)[T, OC] + b (FABNet's projection, and Pixelated
 * Butterfly's baseline): x [T, IC] is zero-padded to n = the power of two ≥ IC and copied into
 * S = terms·⌈OC / n⌉ stacks (width W = S·n); then L = log₂n factors each mix, within every stack,
 * the pairs (p, p XOR 2^k) by a 2×2 twiddle — z'[p] = a_k[p]·z[p] + c_k[p]·z[p XOR 2^k], so the
 * twiddle of the pair (p, q) is [[a[p], c[p]], [c[q], a[q]]] — and y is the sum over the terms of
 * each term's first OC columns: a sum of {@code terms} butterfly matrices, so a butterfly can be
 * given as many parameters as a layer it is compared with. Parameters: twiddles [L, 2, W] (row
 * 2k is a_k, row 2k + 1 is c_k) and the optional bias [OC]; 2·W·L + OC instead of IC·OC.
 *
 * <p>Each factor is two broadcast multiplies and a gather of single elements (x viewed as
 * [T·W, 1] rows), O(T·W) work, on any backend. An output is a sum over its stack's n inputs of one
 * product of L twiddles each, so twiddles N(0, (σ²/terms)^(1/L)) give each output the variance
 * IC·σ²·Var(x) of a dense layer with N(0, σ²) weights.
 */
public final class ButterflyLinear implements Projection {
    private final String name;
    private final Device dev;
    public final int in;
    public final int out;
    /** Per-stack size n = 2^L, stacks S and width W = S·n. */
    public final int n;
    public final int width;
    public final int factors;
    /** Butterfly matrices summed, each over ⌈OC / n⌉ stacks of {@link #termWidth} columns. */
    public final int terms;
    public final int termWidth;
    public final Params.Handle twiddles;
    public final Params.Handle bias;
    /** Capacity in rows of the buffers below; they grow with the largest T seen. */
    private int capacity;
    /**
     * Gather indices over flattened rows: into the padded stacks, out of them, and each factor's
     * partner. Factor k swaps runs of 2^k cells (p and p XOR 2^k lie in neighbouring runs), so its
     * index is over z seen as [T·W / 2^k, 2^k] rows: row i's partner is row i XOR 1.
     */
    private Tensor inIdx;
    private Tensor[] outIdx;
    private Tensor[] pairIdx;
    /** z_0 … z_L [T, W]: the padded input and each factor's output (z_0 … z_{L−1} are saved for backward). */
    private Tensor[] z;
    private Tensor tmp;
    private Tensor dz;
    private Tensor dzPrev;
    private int savedRows = -1;

    /** One butterfly matrix: see {@link #ButterflyLinear(Params.Builder, Device, String, int, int, boolean, double, int)}. */
    public ButterflyLinear(Params.Builder pb, Device dev, String name, int in, int out, boolean bias, double denseStd) {
        this(pb, dev, name, in, out, bias, denseStd, 1);
    }

    /**
     * @param denseStd σ of the dense layer whose output variance the initialisation keeps
     * @param terms butterfly matrices summed, ≥ 1
     */
    public ButterflyLinear(Params.Builder pb, Device dev, String name, int in, int out, boolean bias, double denseStd, int terms) {
        if (in < 2 || out < 1) {
            throw new IllegalArgumentException(name + ": butterfly linear needs in ≥ 2 and out ≥ 1, got in " + in + ", out " + out);
        }
        if (terms < 1) {
            throw new IllegalArgumentException(name + ": butterfly terms must be ≥ 1, got " + terms);
        }
        this.name = name;
        this.dev = dev;
        this.in = in;
        this.out = out;
        this.n = Integer.highestOneBit(in - 1) << 1;
        this.factors = Integer.numberOfTrailingZeros(n);
        this.terms = terms;
        this.termWidth = ((out + n - 1) / n) * n;
        this.width = Math.multiplyExact(terms, termWidth);
        double std = Math.pow(denseStd * denseStd / terms, 0.5 / factors);
        this.twiddles = pb.add(name + ".twiddles", Init.normal(std), ParamGroup.DECAY, factors, 2, width);
        this.bias = bias ? pb.add(name + ".bias", Init.zeros(), ParamGroup.NO_DECAY, out) : null;
        this.z = new Tensor[factors + 1];
        this.pairIdx = new Tensor[factors];
        this.outIdx = new Tensor[terms];
    }

    private ButterflyLinear(ButterflyLinear of) {
        this.name = of.name + " (decoding)";
        this.dev = of.dev;
        this.in = of.in;
        this.out = of.out;
        this.n = of.n;
        this.factors = of.factors;
        this.width = of.width;
        this.terms = of.terms;
        this.termWidth = of.termWidth;
        this.twiddles = of.twiddles;
        this.bias = of.bias;
        this.z = new Tensor[factors + 1];
        this.pairIdx = new Tensor[factors];
        this.outIdx = new Tensor[terms];
    }

    @Override
    public ButterflyLinear decodingTwin() {
        return new ButterflyLinear(this);
    }

    /** Twiddles a = 1, c = 0: the identity on the first min(IC, OC) columns (terms times it for several terms). */
    public void setIdentity() {
        float[] v = new float[factors * 2 * width];
        for (int k = 0; k < factors; k++) {
            java.util.Arrays.fill(v, k * 2 * width, k * 2 * width + width, 1f);
        }
        twiddles.value().copyFrom(v);
    }

    private Tensor a(Tensor t, int k) {
        return t.view(k * 2 * width, width);
    }

    private Tensor c(Tensor t, int k) {
        return t.view(k * 2 * width + width, width);
    }

    private void ensure(int t) {
        if (t <= capacity) {
            return;
        }
        if ((long) t * width > Integer.MAX_VALUE) {
            throw new IllegalArgumentException(name + ": " + t + " rows × butterfly width " + width + " (" + terms
                    + " terms) exceed one tensor's 2^31-1 elements; use fewer butterfly_terms or shorter batches");
        }
        release();
        capacity = t;
        int[] ii = new int[t * width];
        int[] oi = new int[t * out];
        for (int r = 0; r < t; r++) {
            for (int p = 0; p < width; p++) {
                int i = p % n;
                ii[r * width + p] = i < in ? r * in + i : -1;
            }
        }
        inIdx = dev.allocate(DType.I32, t * width).copyFrom(ii);
        for (int j = 0; j < terms; j++) {
            for (int r = 0; r < t; r++) {
                for (int o = 0; o < out; o++) {
                    oi[r * out + o] = r * width + j * termWidth + o;
                }
            }
            outIdx[j] = dev.allocate(DType.I32, t * out).copyFrom(oi);
        }
        for (int k = 0; k < factors; k++) {
            int[] pi = new int[(t * width) >> k];
            for (int i = 0; i < pi.length; i++) {
                pi[i] = i ^ 1;
            }
            pairIdx[k] = dev.allocate(DType.I32, pi.length).copyFrom(pi);
        }
        for (int k = 0; k <= factors; k++) {
            z[k] = dev.allocate(DType.F32, t * width);
        }
        tmp = dev.allocate(DType.F32, t * width);
        dz = dev.allocate(DType.F32, t * width);
        dzPrev = dev.allocate(DType.F32, t * width);
    }

    private static Tensor rows(Tensor buf, int t, int cols) {
        return buf.view(0, t, cols);
    }

    private static Tensor idx(Tensor buf, int n) {
        return buf.view(0, n);
    }

    /** y[T, OC] = B(x) + b; keeps the factors' inputs until {@link #backward}. x must not change until then. */
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
        int cells = t * width;
        be.gatherRows(rows(z[0], cells, 1), x.reshape(t * in, 1), idx(inIdx, cells));
        Tensor tw = twiddles.value();
        for (int k = 0; k < factors; k++) {
            Tensor zk = rows(z[k], t, width);
            Tensor next = rows(z[k + 1], t, width);
            Tensor partner = rows(tmp, t, width);
            gatherPartners(be, partner, zk, k, cells);
            be.binary(BinaryOp.MUL, partner, partner, c(tw, k));
            be.binary(BinaryOp.MUL, next, zk, a(tw, k));
            be.binary(BinaryOp.ADD, next, next, partner);
        }
        Tensor last = rows(z[factors], cells, 1);
        be.gatherRows(y.reshape(t * out, 1), last, idx(outIdx[0], t * out));
        for (int j = 1; j < terms; j++) {
            Tensor term = rows(tmp, t, out);
            be.gatherRows(term.reshape(t * out, 1), last, idx(outIdx[j], t * out));
            be.binary(BinaryOp.ADD, y, y, term);
        }
        if (bias != null) {
            be.binary(BinaryOp.ADD, y, y, bias.value());
        }
        savedRows = t;
    }

    /** dx += dy·∂y/∂x (skipped when dx is null); twiddle and bias gradients accumulate. */
    @Override
    public void backward(Tensor dx, Tensor dy) {
        int t = dy.rows();
        if (savedRows != t) {
            throw new IllegalStateException(name + ": backward for " + t + " rows without a forward over them");
        }
        Backend be = dev.backend();
        int cells = t * width;
        Tensor g = rows(dz, t, width);
        be.fill(g, 0f);
        for (int j = 0; j < terms; j++) {
            be.scatterAddRows(g.reshape(cells, 1), dy.reshape(t * out, 1), idx(outIdx[j], t * out), null);
        }
        if (bias != null) {
            be.addColumnSums(bias.grad(), dy);
        }
        Tensor tw = twiddles.value();
        Tensor dtw = twiddles.grad();
        Tensor prev = rows(dzPrev, t, width);
        Tensor scratch = rows(tmp, t, width);
        for (int k = factors - 1; k >= 0; k--) {
            Tensor zk = rows(z[k], t, width);
            be.binary(BinaryOp.MUL, scratch, g, zk);
            be.addColumnSums(a(dtw, k), scratch);
            // dc_k[p] = Σ_t dz[p]·z[p XOR 2^k]: gather the partner into prev, reused below as scratch.
            gatherPartners(be, prev, zk, k, cells);
            be.binary(BinaryOp.MUL, prev, prev, g);
            be.addColumnSums(c(dtw, k), prev);
            // dz_k[q] = a_k[q]·dz[q] + c_k[q XOR 2^k]·dz[q XOR 2^k]: pairing is its own inverse, so a gather.
            be.binary(BinaryOp.MUL, scratch, g, c(tw, k));
            gatherPartners(be, prev, scratch, k, cells);
            be.binary(BinaryOp.MUL, scratch, g, a(tw, k));
            be.binary(BinaryOp.ADD, prev, prev, scratch);
            Tensor swap = g;
            g = prev;
            prev = swap;
        }
        if (dx != null) {
            be.scatterAddRows(dx.reshape(t * in, 1), g.reshape(cells, 1), idx(inIdx, cells), null);
        }
    }

    /** out[p] = z[p XOR 2^k] over all T·W cells, as rows of 2^k cells. */
    private void gatherPartners(Backend be, Tensor out, Tensor z, int k, int cells) {
        int runs = cells >> k;
        be.gatherRows(out.reshape(runs, 1 << k), z.reshape(runs, 1 << k), idx(pairIdx[k], runs));
    }

    private void release() {
        close(inIdx);
        for (Tensor o : outIdx) {
            close(o);
        }
        for (Tensor p : pairIdx) {
            close(p);
        }
        for (Tensor b : z) {
            close(b);
        }
        close(tmp);
        close(dz);
        close(dzPrev);
    }

    private static void close(Tensor t) {
        if (t != null && !t.isClosed()) {
            t.close();
        }
    }

    @Override
    public void close() {
        release();
        capacity = 0;
    }
}
