package org.kindling.ops.reference;

import static org.kindling.ops.KernelChecks.binaryPeriod;
import static org.kindling.ops.KernelChecks.checkDropout;
import static org.kindling.ops.KernelChecks.checkIds;
import static org.kindling.ops.KernelChecks.checkScaleRows;
import static org.kindling.ops.KernelChecks.checkSpan;
import static org.kindling.ops.KernelChecks.checkTargets;
import static org.kindling.ops.KernelChecks.numel;
import static org.kindling.ops.KernelChecks.sameNumel;
import static org.kindling.ops.KernelChecks.sameRows;

import java.util.Arrays;
import java.util.List;
import org.kindling.ops.AdamW;
import org.kindling.ops.Attention;
import org.kindling.ops.Backend;
import org.kindling.ops.BinaryOp;
import org.kindling.ops.CausalConv;
import org.kindling.ops.DType;
import org.kindling.ops.DropoutMask;
import org.kindling.ops.FavorFeatures;
import org.kindling.ops.Gemm;
import org.kindling.ops.GroupedGemm;
import org.kindling.ops.KernelChecks;
import org.kindling.ops.LinearAttention;
import org.kindling.ops.MoeRouting;
import org.kindling.ops.Noise;
import org.kindling.ops.ReduceOp;
import org.kindling.ops.Reference;
import org.kindling.ops.RowMap;
import org.kindling.ops.Ssm;
import org.kindling.ops.Tensor;
import org.kindling.ops.TopK;
import org.kindling.ops.UnaryOp;
import org.kindling.ops.Varlen;

/**
 * Every kernel as its {@link Reference} twin over double storage: each call reads its inputs into
 * fresh arrays, runs the twin and then writes (forward) or adds (backward) the result, so outputs
 * may alias inputs anywhere. Argument checks are the CPU backend's ({@link org.kindling.ops.KernelChecks}).
 */
final class ReferenceBackend implements Backend {

    @Override
    public String name() {
        return "reference";
    }

    @Override
    public String gemmImpl() {
        return "reference";
    }

    // ---- storage access ----

    private static ReferenceStorage storage(Tensor t, DType want, String what) {
        return KernelChecks.storage(t, want, ReferenceStorage.class, "the reference device", what);
    }

    private static double[] f64(Tensor t, String what) {
        return storage(t, DType.F32, what).doubles();
    }

    private static int[] i32(Tensor t, String what) {
        return storage(t, DType.I32, what).ints();
    }

    /** A copy of a floating tensor's elements. */
    private static double[] read(Tensor t, String what) {
        return Arrays.copyOfRange(f64(t, what), t.offset(), t.offset() + t.numel());
    }

    private static int[] readInts(Tensor t, String what) {
        return Arrays.copyOfRange(i32(t, what), t.offset(), t.offset() + t.numel());
    }

    private static void write(Tensor t, String what, double[] v) {
        numel(t, what, v.length);
        System.arraycopy(v, 0, f64(t, what), t.offset(), v.length);
    }

    /** t += v: backward kernels accumulate. */
    private static void add(Tensor t, String what, double[] v) {
        numel(t, what, v.length);
        double[] d = f64(t, what);
        for (int i = 0; i < v.length; i++) {
            d[t.offset() + i] += v[i];
        }
    }

    // ---- host transfers ----

    @Override
    public void copyFromHost(Tensor dst, float[] src) {
        copyFromHost(dst, Reference.widen(src));
    }

    @Override
    public void copyFromHost(Tensor dst, double[] src) {
        if (src.length != dst.numel()) {
            throw new IllegalArgumentException(src.length + " host values for " + dst);
        }
        write(dst, "dst", src);
    }

    @Override
    public void copyFromHost(Tensor dst, int[] src) {
        if (src.length != dst.numel()) {
            throw new IllegalArgumentException(src.length + " host ints for " + dst);
        }
        System.arraycopy(src, 0, i32(dst, "dst"), dst.offset(), src.length);
    }

    @Override
    public void copyToHost(float[] dst, Tensor src) {
        if (dst.length != src.numel()) {
            throw new IllegalArgumentException(dst.length + " host floats for " + src);
        }
        double[] s = f64(src, "src");
        for (int i = 0; i < dst.length; i++) {
            dst[i] = (float) s[src.offset() + i];
        }
    }

    @Override
    public void copyToHost(double[] dst, Tensor src) {
        if (dst.length != src.numel()) {
            throw new IllegalArgumentException(dst.length + " host doubles for " + src);
        }
        System.arraycopy(f64(src, "src"), src.offset(), dst, 0, dst.length);
    }

    @Override
    public void copyToHost(int[] dst, Tensor src) {
        if (dst.length != src.numel()) {
            throw new IllegalArgumentException(dst.length + " host ints for " + src);
        }
        System.arraycopy(i32(src, "src"), src.offset(), dst, 0, dst.length);
    }

    // ---- data movement ----

    @Override
    public void fill(Tensor out, float value) {
        int o = out.offset();
        int n = out.numel();
        if (out.dtype() == DType.I32) {
            if (value != (int) value) {
                throw new IllegalArgumentException("cannot fill I32 " + out + " with " + value);
            }
            Arrays.fill(i32(out, "out"), o, o + n, (int) value);
        } else {
            Arrays.fill(f64(out, "out"), o, o + n, value);
        }
    }

    @Override
    public void copy(Tensor dst, Tensor src) {
        sameNumel(dst, "dst", src, "src");
        if (src.dtype() != dst.dtype()) {
            throw new IllegalArgumentException("copy from " + src.dtype() + " to " + dst.dtype() + " is not supported");
        }
        if (src.dtype() == DType.I32) {
            System.arraycopy(i32(src, "src"), src.offset(), i32(dst, "dst"), dst.offset(), src.numel());
        } else {
            write(dst, "dst", read(src, "src"));
        }
    }

    // ---- matrix products ----

    @Override
    public void gemm(Gemm g, Tensor c, Tensor a, Tensor b) {
        double[] av = f64(a, "gemm A");
        double[] bv = f64(b, "gemm B");
        double[] cv = f64(c, "gemm C");
        checkSpan(a, "A", g.spanA(), g.strideA(), g.batch());
        checkSpan(b, "B", g.spanB(), g.strideB(), g.batch());
        checkSpan(c, "C", g.spanC(), g.strideC(), g.batch());
        for (int i = 0; i < g.batch(); i++) {
            gemmOne(g, cv, c.offset() + (int) (i * g.strideC()), av, a.offset() + (int) (i * g.strideA()),
                    bv, b.offset() + (int) (i * g.strideB()));
        }
    }

    @Override
    public void gemmBatched(Gemm g, List<Tensor> c, List<Tensor> a, List<Tensor> b) {
        if (c.size() != a.size() || c.size() != b.size()) {
            throw new IllegalArgumentException("gemmBatched needs as many A (" + a.size() + ") and B (" + b.size()
                    + ") as C (" + c.size() + ") matrices");
        }
        if (g.batch() != 1) {
            throw new IllegalArgumentException("gemmBatched takes a single-matrix layout; the lists give the batch");
        }
        for (int i = 0; i < c.size(); i++) {
            Tensor ci = c.get(i);
            Tensor ai = a.get(i);
            Tensor bi = b.get(i);
            checkSpan(ai, "A[" + i + "]", g.spanA(), 0, 1);
            checkSpan(bi, "B[" + i + "]", g.spanB(), 0, 1);
            checkSpan(ci, "C[" + i + "]", g.spanC(), 0, 1);
            gemmOne(g, f64(ci, "gemmBatched C[" + i + "]"), ci.offset(), f64(ai, "gemmBatched A[" + i + "]"), ai.offset(),
                    f64(bi, "gemmBatched B[" + i + "]"), bi.offset());
        }
    }

    /** One product, written back into C's M×N block with row stride ldc. */
    private static void gemmOne(Gemm g, double[] c, int oc, double[] a, int oa, double[] b, int ob) {
        double[] r = Reference.gemm(g, c, oc, a, oa, b, ob);
        for (int i = 0; i < g.m(); i++) {
            System.arraycopy(r, i * g.n(), c, oc + i * g.ldc(), g.n());
        }
    }

    // ---- elementwise ----

    @Override
    public void unary(UnaryOp op, Tensor out, Tensor x) {
        sameNumel(out, "out", x, "x");
        write(out, "out", Reference.unary(op, read(x, "x")));
    }

    @Override
    public void affine(Tensor out, Tensor x, float alpha, float beta) {
        sameNumel(out, "out", x, "x");
        double[] v = read(x, "x");
        for (int i = 0; i < v.length; i++) {
            v[i] = alpha * v[i] + beta;
        }
        write(out, "out", v);
    }

    @Override
    public void binary(BinaryOp op, Tensor out, Tensor a, Tensor b) {
        sameNumel(out, "out", a, "a");
        binaryPeriod(op, a, b);
        write(out, "out", Reference.binary(op, read(a, "a"), read(b, "b")));
    }

    // ---- reductions ----

    @Override
    public void reduceRows(ReduceOp op, Tensor out, Tensor x) {
        numel(out, "reduceRows out", x.rows());
        if (x.cols() == 0 && op != ReduceOp.SUM) {
            throw new IllegalArgumentException("reduceRows " + op + " over an empty last dimension of " + x);
        }
        write(out, "out", Reference.reduceRows(op, read(x, "x"), x.rows(), x.cols()));
    }

    @Override
    public void addColumnSums(Tensor out, Tensor x) {
        numel(out, "addColumnSums out", x.cols());
        add(out, "out", Reference.columnSums(read(x, "x"), x.rows(), x.cols()));
    }

    @Override
    public double sumOfSquares(Tensor x) {
        return Reference.sumOfSquares(read(x, "x"));
    }

    @Override
    public void addSum(Tensor out, Tensor x, float scale) {
        KernelChecks.scalarOut(out, "addSum out");
        add(out, "out", new double[] {scale * Reference.sum(read(x, "x"))});
    }

    @Override
    public void addSumOfSquares(Tensor out, Tensor x, float scale) {
        KernelChecks.scalarOut(out, "addSumOfSquares out");
        add(out, "out", new double[] {scale * Reference.sumOfSquares(read(x, "x"))});
    }

    // ---- softmax ----

    @Override
    public void softmaxForward(Tensor y, Tensor x) {
        sameRows(y, "softmax y", x);
        write(y, "y", Reference.softmax(read(x, "x"), x.rows(), x.cols()));
    }

    @Override
    public void softmaxBackward(Tensor dx, Tensor dy, Tensor y) {
        sameRows(dx, "softmax dx", y);
        sameRows(dy, "softmax dy", y);
        add(dx, "dx", Reference.softmaxBackwardFromOutput(read(dy, "dy"), read(y, "y"), y.rows(), y.cols()));
    }

    // ---- normalization ----

    @Override
    public void layerNormForward(Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor weight, Tensor bias, float eps) {
        int rows = x.rows();
        int cols = x.cols();
        KernelChecks.checkLayerNormForward(out, mean, rstd, x, weight, bias);
        double[][] r = Reference.layerNorm(read(x, "x"), read(weight, "weight"), read(bias, "bias"), rows, cols, eps);
        write(out, "out", r[0]);
        write(mean, "mean", r[1]);
        write(rstd, "rstd", r[2]);
    }

    @Override
    public void layerNormBackward(Tensor dx, Tensor dweight, Tensor dbias, Tensor dy, Tensor x, Tensor weight,
                                  Tensor mean, Tensor rstd) {
        int rows = x.rows();
        int cols = x.cols();
        KernelChecks.checkLayerNormBackward(dx, dweight, dbias, dy, x, weight, mean, rstd);
        double[][] g = Reference.layerNormBackward(read(dy, "dy"), read(x, "x"), read(weight, "weight"), read(mean, "mean"),
                read(rstd, "rstd"), rows, cols);
        add(dx, "dx", g[0]);
        add(dweight, "dweight", g[1]);
        add(dbias, "dbias", g[2]);
    }

    @Override
    public void addLayerNormForward(Tensor sum, Tensor out, Tensor mean, Tensor rstd, Tensor a, Tensor b, Tensor weight,
                                    Tensor bias, float eps) {
        sameNumel(a, "a", sum, "sum");
        sameNumel(b, "b", sum, "sum");
        KernelChecks.checkLayerNormForward(out, mean, rstd, sum, weight, bias);
        double[] av = read(a, "a");
        double[] bv = read(b, "b");
        double[] s = new double[av.length];
        for (int i = 0; i < s.length; i++) {
            s[i] = av[i] + bv[i];
        }
        double[][] r = Reference.layerNorm(s, read(weight, "weight"), read(bias, "bias"), sum.rows(), sum.cols(), eps);
        write(sum, "sum", s);
        write(out, "out", r[0]);
        write(mean, "mean", r[1]);
        write(rstd, "rstd", r[2]);
    }

    @Override
    public void layerNormBackwardAdd(Tensor dx, Tensor dweight, Tensor dbias, Tensor dy, Tensor dres, Tensor x,
                                     Tensor weight, Tensor mean, Tensor rstd) {
        sameNumel(dres, "dres", dx, "dx");
        KernelChecks.checkLayerNormBackward(dx, dweight, dbias, dy, x, weight, mean, rstd);
        double[][] g = Reference.layerNormBackward(read(dy, "dy"), read(x, "x"), read(weight, "weight"), read(mean, "mean"),
                read(rstd, "rstd"), x.rows(), x.cols());
        double[] dr = read(dres, "dres");
        for (int i = 0; i < dr.length; i++) {
            g[0][i] += dr[i];
        }
        add(dx, "dx", g[0]);
        add(dweight, "dweight", g[1]);
        add(dbias, "dbias", g[2]);
    }

    @Override
    public void rmsNormForward(Tensor out, Tensor rstd, Tensor x, Tensor weight, float eps) {
        int rows = x.rows();
        int cols = x.cols();
        KernelChecks.checkRmsNormForward(out, rstd, x, weight);
        double[][] r = Reference.rmsNorm(read(x, "x"), read(weight, "weight"), rows, cols, eps);
        write(out, "out", r[0]);
        write(rstd, "rstd", r[1]);
    }

    @Override
    public void rmsNormBackward(Tensor dx, Tensor dweight, Tensor dy, Tensor x, Tensor weight, Tensor rstd) {
        int rows = x.rows();
        int cols = x.cols();
        KernelChecks.checkRmsNormBackward(dx, dweight, dy, x, weight, rstd);
        double[][] g = Reference.rmsNormBackward(read(dy, "dy"), read(x, "x"), read(weight, "weight"), read(rstd, "rstd"),
                rows, cols);
        add(dx, "dx", g[0]);
        add(dweight, "dweight", g[1]);
    }

    // ---- activations ----

    @Override
    public void geluForward(Tensor out, Tensor x) {
        sameNumel(out, "out", x, "x");
        write(out, "out", Reference.gelu(read(x, "x")));
    }

    @Override
    public void geluBackward(Tensor dx, Tensor dy, Tensor x) {
        sameNumel(dx, "dx", x, "x");
        sameNumel(dy, "dy", x, "x");
        add(dx, "dx", Reference.geluBackward(read(dy, "dy"), read(x, "x")));
    }

    @Override
    public void biasGeluForward(Tensor out, Tensor tanhExp, Tensor h, Tensor bias) {
        sameNumel(out, "out", h, "h");
        sameNumel(tanhExp, "tanhExp", h, "h");
        int cols = h.cols();
        numel(bias, "biasGeluForward bias", cols);
        double[] hv = read(h, "h");
        double[] bv = read(bias, "bias");
        double[] e = new double[hv.length];
        for (int i = 0; i < hv.length; i++) {
            hv[i] += bv[i % cols];
            double v = hv[i];
            e[i] = Math.exp(2 * Reference.GELU_SCALE * (v + Reference.GELU_CUBE * v * v * v));
        }
        write(h, "h", hv);
        write(out, "out", Reference.gelu(hv));
        write(tanhExp, "tanhExp", e);
    }

    /** From the kept e = exp(2u): tanh u = 1 − 2/(e + 1), which stays 1 for e = ∞. */
    @Override
    public void geluBackwardBias(Tensor dx, Tensor dbias, Tensor dy, Tensor x, Tensor tanhExp) {
        sameNumel(dx, "dx", x, "x");
        sameNumel(dy, "dy", x, "x");
        sameNumel(tanhExp, "tanhExp", x, "x");
        numel(dbias, "geluBackwardBias dbias", x.cols());
        double[] xv = read(x, "x");
        double[] dyv = read(dy, "dy");
        double[] e = read(tanhExp, "tanhExp");
        double[] g = new double[xv.length];
        for (int i = 0; i < g.length; i++) {
            double v = xv[i];
            double th = 1 - 2 / (e[i] + 1);
            double d = 0.5 * (1 + th) + 0.5 * v * (1 - th * th) * Reference.GELU_SCALE * (1 + 3 * Reference.GELU_CUBE * v * v);
            g[i] = d * dyv[i];
        }
        write(dx, "dx", g);
        add(dbias, "dbias", Reference.columnSums(g, x.rows(), x.cols()));
    }

    // ---- dropout ----

    @Override
    public void dropoutForward(Tensor out, Tensor x, float p, long seed) {
        checkDropout(p);
        sameNumel(out, "out", x, "x");
        write(out, "out", Reference.dropout(read(x, "x"), p, seed));
    }

    @Override
    public void biasDropoutAddForward(Tensor out, Tensor x, Tensor bias, Tensor residual, float p, long seed) {
        checkDropout(p);
        sameNumel(out, "out", x, "x");
        sameNumel(residual, "residual", x, "x");
        int cols = x.cols();
        numel(bias, "biasDropoutAddForward bias", cols);
        double[] xv = read(x, "x");
        double[] bv = read(bias, "bias");
        double[] rv = read(residual, "residual");
        for (int i = 0; i < xv.length; i++) {
            double v = xv[i] + bv[i % cols];
            xv[i] = rv[i] + (DropoutMask.keeps(seed, i, p) ? v / (1.0 - p) : 0);
        }
        write(out, "out", xv);
    }

    @Override
    public void dropoutBackward(Tensor dx, Tensor dy, float p, long seed) {
        checkDropout(p);
        sameNumel(dx, "dx", dy, "dy");
        // The same mask and scale as the forward: dropout is linear in its input.
        add(dx, "dx", Reference.dropout(read(dy, "dy"), p, seed));
    }

    // ---- embeddings ----

    @Override
    public void embeddingForward(Tensor out, Tensor ids, Tensor table) {
        int n = ids.numel();
        int cols = table.cols();
        numel(out, "embedding out", n * cols);
        int[] idv = readInts(ids, "ids");
        checkIds(idv, 0, n, table.rows(), "embedding ids");
        write(out, "out", Reference.embedding(idv, read(table, "table"), cols));
    }

    @Override
    public void embeddingBackward(Tensor dtable, Tensor dout, Tensor ids) {
        int n = ids.numel();
        int cols = dtable.cols();
        numel(dout, "embedding dout", n * cols);
        int[] idv = readInts(ids, "ids");
        checkIds(idv, 0, n, dtable.rows(), "embedding ids");
        add(dtable, "dtable", Reference.embeddingBackward(read(dout, "dout"), idv, dtable.rows(), cols));
    }

    // ---- loss ----

    private static int[] targets(Tensor logits, Tensor losses, Tensor targets, int ignoreIndex) {
        numel(losses, "cross-entropy losses", logits.rows());
        numel(targets, "cross-entropy targets", logits.rows());
        int[] tv = readInts(targets, "targets");
        checkTargets(tv, 0, tv.length, logits.cols(), ignoreIndex);
        return tv;
    }

    @Override
    public void crossEntropyForward(Tensor losses, Tensor logits, Tensor targets, int ignoreIndex) {
        int[] tv = targets(logits, losses, targets, ignoreIndex);
        write(losses, "losses", Reference.crossEntropy(read(logits, "logits"), tv, logits.rows(), logits.cols(), ignoreIndex));
    }

    @Override
    public void crossEntropyForwardBackward(Tensor losses, Tensor dlogits, Tensor logits, Tensor targets,
                                            int ignoreIndex, float dlossScale) {
        sameRows(dlogits, "cross-entropy dlogits", logits);
        int[] tv = targets(logits, losses, targets, ignoreIndex);
        double[] lv = read(logits, "logits");
        // Both results come from the copy in lv, so dlogits may be the logits themselves.
        double[] loss = Reference.crossEntropy(lv, tv, logits.rows(), logits.cols(), ignoreIndex);
        double[] grad = Reference.crossEntropyBackward(lv, tv, logits.rows(), logits.cols(), ignoreIndex, dlossScale);
        write(losses, "losses", loss);
        write(dlogits, "dlogits", grad);
    }

    // ---- optimizer ----

    @Override
    public void adamW(Tensor params, Tensor grads, Tensor m, Tensor v, AdamW step) {
        sameNumel(grads, "grads", params, "params");
        sameNumel(m, "m", params, "params");
        sameNumel(v, "v", params, "params");
        double[][] r = Reference.adamW(read(params, "params"), read(grads, "grads"), read(m, "m"), read(v, "v"), step);
        write(params, "params", r[0]);
        write(m, "m", r[1]);
        write(v, "v", r[2]);
    }

    // ---- attention ----

    /**
     * The reference backend alone reads the device offsets back: a layer whose host offsets are
     * not what the device holds would run a device kernel on one layout and its launch on another.
     */
    private static void agree(Varlen cu, String what) {
        cu.checkDevice(what);
    }

    @Override
    public void attentionForward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, Varlen cuSeqlensQ,
                                 Varlen cuSeqlensK, Attention attn) {
        Attention.Batch batch = attn.check(q, k, v, cuSeqlensQ, cuSeqlensK);
        agree(cuSeqlensQ, "cu_seqlens_q");
        agree(cuSeqlensK, "cu_seqlens_k");
        attn.checkOutputs(batch, out, lse);
        double[][] r = Reference.attention(attn, read(q, "q"), read(k, "k"), read(v, "v"), batch.cuQ(), batch.cuK());
        write(out, "out", r[0]);
        write(lse, "lse", r[1]);
    }

    /**
     * The twin recomputes the probabilities from q, k, v; the saved out and lse a fused kernel
     * would read instead must be exactly what the forward wrote for these inputs (the twin is
     * deterministic), so a layer handing over stale or wrong saved state fails here too.
     */
    @Override
    public void attentionBackward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out,
                                  Tensor lse, Varlen cuSeqlensQ, Varlen cuSeqlensK, Attention attn) {
        Attention.Batch batch = attn.check(q, k, v, cuSeqlensQ, cuSeqlensK);
        agree(cuSeqlensQ, "cu_seqlens_q");
        agree(cuSeqlensK, "cu_seqlens_k");
        attn.checkOutputs(batch, out, lse);
        sameNumel(dq, "attention dq", q, "q");
        sameNumel(dk, "attention dk", k, "k");
        sameNumel(dv, "attention dv", v, "v");
        sameNumel(dout, "attention dout", q, "q");
        double[] qv = read(q, "q");
        double[] kv = read(k, "k");
        double[] vv = read(v, "v");
        double[][] fwd = Reference.attention(attn, qv, kv, vv, batch.cuQ(), batch.cuK());
        if (!Arrays.equals(fwd[0], read(out, "out")) || !Arrays.equals(fwd[1], read(lse, "lse"))) {
            throw new IllegalArgumentException("attention backward: out " + out + " and lse " + lse
                    + " are not what the forward computes from these q, k and v (stale or wrong saved state)");
        }
        double[][] g = Reference.attentionBackward(attn, read(dout, "dout"), qv, kv, vv, batch.cuQ(), batch.cuK());
        add(dq, "dq", g[0]);
        add(dk, "dk", g[1]);
        add(dv, "dv", g[2]);
    }

    // ---- linear attention ----

    /** q or k's elements, checked to be non-negative features. */
    private static double[] features(Tensor t, String what, LinearAttention l) {
        double[] x = read(t, what);
        LinearAttention.checkFeatures(what, x.length, l.heads() * l.features(), i -> x[i]);
        return x;
    }

    @Override
    public void linearAttentionForward(Tensor out, Tensor q, Tensor k, Tensor v, Varlen cuSeqlens, int heads, float eps) {
        LinearAttention l = LinearAttention.check(out, q, k, v, cuSeqlens, heads, eps);
        agree(cuSeqlens, "cu_seqlens");
        write(out, "out", Reference.linearAttention(l, features(q, "q", l), features(k, "k", l), read(v, "v"), eps));
    }

    @Override
    public void linearAttentionBackward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v,
                                        Varlen cuSeqlens, int heads, float eps) {
        LinearAttention l = LinearAttention.check(dout, q, k, v, cuSeqlens, heads, eps);
        agree(cuSeqlens, "cu_seqlens");
        l.checkGrads(dq, dk, dv, dout, q, k, v);
        double[][] g = Reference.linearAttentionBackward(l, read(dout, "dout"), features(q, "q", l), features(k, "k", l),
                read(v, "v"), eps);
        add(dq, "dq", g[0]);
        add(dk, "dk", g[1]);
        add(dv, "dv", g[2]);
    }

    @Override
    public void linearAttentionStep(Tensor out, Tensor state, Tensor norm, Tensor q, Tensor k, Tensor v, int heads,
                                    float eps) {
        LinearAttention l = LinearAttention.checkStep(out, state, norm, q, k, v, heads, eps);
        double[][] r = Reference.linearAttentionStep(l, read(state, "state"), read(norm, "norm"), features(q, "q", l),
                features(k, "k", l), read(v, "v"), eps);
        write(out, "out", r[0]);
        write(state, "state", r[1]);
        write(norm, "norm", r[2]);
    }

    // ---- causal long convolution (S4D, H3) ----

    @Override
    public void causalConvForward(Tensor y, Tensor u, Tensor k, Varlen cuSeqlens) {
        CausalConv conv = CausalConv.check(y, u, k, cuSeqlens);
        agree(cuSeqlens, "cu_seqlens");
        write(y, "y", Reference.causalConv(read(u, "u"), read(k, "k"), conv.cu(), conv.channels()));
    }

    @Override
    public void causalConvBackward(Tensor du, Tensor dk, Tensor dy, Tensor u, Tensor k, Varlen cuSeqlens) {
        CausalConv conv = CausalConv.checkBackward(du, dk, dy, u, k, cuSeqlens);
        agree(cuSeqlens, "cu_seqlens");
        double[][] g = Reference.causalConvBackward(read(dy, "dy"), read(u, "u"), read(k, "k"), conv.cu(),
                conv.channels());
        add(du, "du", g[0]);
        add(dk, "dk", g[1]);
    }

    // ---- diagonal state-space convolution (S4D, H3's diagonal SSM) ----

    @Override
    public void ssmConvForward(Tensor y, Tensor u, Tensor logDt, Tensor aRe, Tensor aIm, Tensor c, Varlen cuSeqlens,
                               int block) {
        Ssm m = Ssm.check(y, u, logDt, aRe, aIm, c, cuSeqlens, block);
        agree(cuSeqlens, "cu_seqlens");
        write(y, "y", Reference.ssmConv(read(u, "u"), read(logDt, "logDt"), read(aRe, "aRe"), read(aIm, "aIm"),
                read(c, "c"), m.cu(), m.channels()));
    }

    @Override
    public void ssmConvBackward(Tensor du, Tensor dlogDt, Tensor daRe, Tensor daIm, Tensor dc, Tensor dy, Tensor u,
                                Tensor logDt, Tensor aRe, Tensor aIm, Tensor c, Varlen cuSeqlens, int block) {
        Ssm m = Ssm.checkBackward(du, dlogDt, daRe, daIm, dc, dy, u, logDt, aRe, aIm, c, cuSeqlens, block);
        agree(cuSeqlens, "cu_seqlens");
        double[][] g = Reference.ssmConvBackward(read(dy, "dy"), read(u, "u"), read(logDt, "logDt"),
                read(aRe, "aRe"), read(aIm, "aIm"), read(c, "c"), m.cu(), m.channels());
        add(du, "du", g[0]);
        add(dlogDt, "dlogDt", g[1]);
        add(daRe, "daRe", g[2]);
        add(daIm, "daIm", g[3]);
        add(dc, "dc", g[4]);
    }

    @Override
    public void ssmStep(Tensor y, Tensor state, Tensor u, Tensor logDt, Tensor aRe, Tensor aIm, Tensor c) {
        Ssm m = Ssm.checkStep(y, state, u, logDt, aRe, aIm, c);
        double[][] r = Reference.ssmStep(read(state, "state"), read(u, "u"), read(logDt, "logDt"), read(aRe, "aRe"),
                read(aIm, "aIm"), read(c, "c"), m.channels());
        write(y, "y", r[0]);
        write(state, "state", r[1]);
    }

    // ---- feature maps: unary backward, FAVOR+ ----

    @Override
    public void unaryBackward(UnaryOp op, Tensor dx, Tensor dy, Tensor x) {
        sameNumel(dx, "unary backward dx", x, "x");
        sameNumel(dy, "unary backward dy", x, "x");
        add(dx, "dx", Reference.unaryBackward(op, read(dy, "dy"), read(x, "x")));
    }

    @Override
    public void favorFeatures(Tensor out, Tensor x, Tensor w, int heads, boolean query) {
        FavorFeatures f = FavorFeatures.check(out, x, w, heads);
        write(out, "out", Reference.favorFeatures(f, read(x, "x"), read(w, "w"), query));
    }

    @Override
    public void favorFeaturesBackward(Tensor dx, Tensor dout, Tensor out, Tensor x, Tensor w, int heads, boolean query) {
        FavorFeatures f = FavorFeatures.checkBackward(dx, dout, out, x, w, heads);
        add(dx, "dx", Reference.favorFeaturesBackward(f, read(dout, "dout"), read(x, "x"), read(w, "w"), query));
    }

    // ---- grouped GEMM (dropless mixture of experts) ----

    @Override
    public void groupedGemm(Gemm g, Tensor c, Tensor a, Tensor b, Tensor offsets) {
        GroupedGemm gg = GroupedGemm.check(g, c, a, b, offsets);
        write(c, "c", Reference.groupedGemm(gg, read(c, "c"), read(a, "a"), read(b, "b")));
    }

    // ==== mixture-of-experts routing (dropless, MegaBlocks-style; see MoeRouting) ====

    @Override
    public void topK(Tensor values, Tensor indices, Tensor x, int k) {
        TopK t = TopK.check(values, indices, x, k);
        double[] xv = read(x, "x");
        int[] ids = Reference.topK(xv, t.experts(), k);
        double[] v = new double[ids.length];
        for (int i = 0; i < ids.length; i++) {
            v[i] = xv[(i / k) * t.experts() + ids[i]];
        }
        write(values, "values", v);
        System.arraycopy(ids, 0, i32(indices, "indices"), indices.offset(), ids.length);
    }

    @Override
    public void expertOffsets(Tensor offsets, Tensor indices, int experts) {
        MoeRouting m = MoeRouting.checkOffsets(offsets, indices, experts);
        int[] ids = readInts(indices, "indices");
        m.counts(ids, 0, "expertOffsets indices");
        int[] o = Reference.expertOffsets(ids, experts);
        System.arraycopy(o, 0, i32(offsets, "offsets"), offsets.offset(), o.length);
    }

    @Override
    public void permutation(Tensor order, Tensor indices, Tensor offsets) {
        MoeRouting m = MoeRouting.checkPermutation(order, indices, offsets);
        int[] ids = readInts(indices, "indices");
        m.checkOffsetsMatch(readInts(offsets, "offsets"), 0, m.counts(ids, 0, "permutation indices"));
        int[] o = Reference.permutation(ids, m.experts());
        System.arraycopy(o, 0, i32(order, "order"), order.offset(), o.length);
    }

    @Override
    public void gatherRows(Tensor out, Tensor x, Tensor rows) {
        RowMap m = RowMap.checkGather(out, x, rows);
        int[] r = readInts(rows, "rows");
        m.checkRows(r, 0, "gatherRows rows");
        write(out, "out", Reference.gatherRows(read(x, "x"), m.channels(), r));
    }

    @Override
    public void scatterAddRows(Tensor out, Tensor x, Tensor rows, Tensor weights) {
        RowMap m = RowMap.checkScatter(out, x, rows, weights);
        int[] r = readInts(rows, "rows");
        m.checkRows(r, 0, "scatterAddRows rows");
        add(out, "out", Reference.scatterAddRows(read(x, "x"), m.channels(), r,
                weights == null ? null : read(weights, "weights"), m.denseRows()));
    }

    // ==== mixture-of-experts capacity, gates and router gradients (Switch-style; see MoeRouting) ====

    @Override
    public void entryTokens(Tensor rows, Tensor entries, int k) {
        MoeRouting.checkEntryTokens(rows, entries, k);
        int[] e = readInts(entries, "entries");
        MoeRouting.checkEntries(e, 0, e.length, "entryTokens entries");
        int[] r = Reference.entryTokens(e, k);
        System.arraycopy(r, 0, i32(rows, "rows"), rows.offset(), r.length);
    }

    @Override
    public void capacitySlots(Tensor slots, Tensor order, Tensor offsets, int capacity) {
        MoeRouting m = MoeRouting.checkCapacity(slots, order, offsets, capacity);
        int[] off = readInts(offsets, "offsets");
        m.checkOffsetsRange(off, 0, "capacitySlots offsets");
        int[] s = Reference.capacitySlots(readInts(order, "order"), off, capacity);
        System.arraycopy(s, 0, i32(slots, "slots"), slots.offset(), s.length);
    }

    @Override
    public void scaleRows(Tensor out, Tensor x, Tensor s) {
        checkScaleRows(out, x, s);
        write(out, "out", Reference.scaleRows(read(x, "x"), read(s, "s"), x.cols()));
    }

    @Override
    public void topKBackward(Tensor dx, Tensor dvalues, Tensor indices) {
        TopK t = TopK.checkBackward(dx, dvalues, indices);
        int[] ids = readInts(indices, "indices");
        t.checkIds(ids, 0, "topKBackward indices");
        add(dx, "dx", Reference.topKBackward(read(dvalues, "dvalues"), ids, t.tokens(), t.experts(), t.k()));
    }

    @Override
    public void uniformNoise(Tensor out, float lo, float hi, long seed) {
        Noise.checkRange(lo, hi);
        write(out, "out", Reference.uniformNoise(out.numel(), lo, hi, seed));
    }
}
