package org.kindling.ops;

import java.util.ArrayList;
import java.util.List;

/**
 * The kernel set every device implements: a small 2-D instruction set (GEMM, elementwise,
 * reductions, softmax) plus the fused kernels a transformer needs. Layers call only these.
 *
 * <p>Conventions, as in llm.c: arguments are ordered outputs, saved state, inputs, weights;
 * backward kernels <em>accumulate</em> ({@code +=}) into every gradient they produce, inputs and
 * parameters alike, so callers zero gradients once per step. Row-wise kernels see a tensor as
 * {@code [N, C]}: N = product of all but the last dimension, C = the last. Outputs of the forward
 * kernels may alias their inputs where noted. Results are bit-identical for the same inputs and
 * thread count.
 */
public interface Backend {

    /** Short name of the implementation, e.g. {@code cpu}. */
    String name();

    /** Name of the GEMM implementation that runs ({@code openblas}, {@code vector}, {@code java}, …). */
    String gemmImpl();

    // ---- host transfers ----

    /** Copies {@code src} into an F32 or BF16 tensor (BF16 rounds to nearest even). */
    void copyFromHost(Tensor dst, float[] src);

    /** Copies {@code src} into an I32 tensor. */
    void copyFromHost(Tensor dst, int[] src);

    /** Copies an F32 or BF16 tensor into {@code dst}. */
    void copyToHost(float[] dst, Tensor src);

    /** Copies an I32 tensor into {@code dst}. */
    void copyToHost(int[] dst, Tensor src);

    /**
     * Copies host doubles into a floating tensor. A device that stores F32 rounds each value to
     * float (BF16: further to bfloat16); the reference device keeps them exactly.
     */
    default void copyFromHost(Tensor dst, double[] src) {
        float[] f = new float[src.length];
        for (int i = 0; i < src.length; i++) {
            f[i] = (float) src[i];
        }
        copyFromHost(dst, f);
    }

    /** Copies a floating tensor into host doubles, exactly: what the device holds, widened. */
    default void copyToHost(double[] dst, Tensor src) {
        float[] f = new float[dst.length];
        copyToHost(f, src);
        for (int i = 0; i < f.length; i++) {
            dst[i] = f[i];
        }
    }

    /**
     * A host store of {@code floats} zeroed floats for this device's copies ({@link #copyToStore}):
     * plain off-heap memory by default; a GPU page-locks it, so its copies are direct transfers.
     */
    default HostStore allocateStore(long floats) {
        return HostStore.allocate(floats);
    }

    /**
     * Copies {@code src}'s elements into {@code dst} at {@code offset}. This default stages them in
     * a heap array; a backend with direct access to its memory copies once.
     */
    default void copyToStore(HostStore dst, long offset, Tensor src) {
        float[] f = new float[src.numel()];
        copyToHost(f, src);
        dst.put(offset, f, 0, f.length);
    }

    /** Copies {@code dst.numel()} floats of {@code src} at {@code offset} into {@code dst}; see {@link #copyToStore}. */
    default void copyFromStore(Tensor dst, HostStore src, long offset) {
        float[] f = new float[dst.numel()];
        src.get(offset, f, 0, f.length);
        copyFromHost(dst, f);
    }

    // ---- data movement ----

    /** Sets every element to {@code value}. */
    void fill(Tensor out, float value);

    /** Copies between tensors of equal element count, converting F32 ↔ BF16 where the types differ. */
    void copy(Tensor dst, Tensor src);

    // ---- matrix products ----

    /**
     * {@code C = alpha·op(A)·op(B) + beta·C} for each of {@code g.batch()} matrices laid out by
     * {@code g}'s leading dimensions and strides, starting at the first element of each tensor.
     */
    void gemm(Gemm g, Tensor c, Tensor a, Tensor b);

    /** The same product over independent matrices: one (C, A, B) triple per list entry. */
    void gemmBatched(Gemm g, List<Tensor> c, List<Tensor> a, List<Tensor> b);

    // ---- elementwise ----

    /** {@code out = op(x)}; {@code out} may be {@code x}. */
    void unary(UnaryOp op, Tensor out, Tensor x);

    /** {@code out = alpha·x + beta}; {@code out} may be {@code x}. */
    void affine(Tensor out, Tensor x, float alpha, float beta);

    /**
     * {@code out = op(a, b)} where b has a's element count, or one row of a's last dimension
     * ({@code [C]}, broadcast over every row); {@code out} may be {@code a}.
     */
    void binary(BinaryOp op, Tensor out, Tensor a, Tensor b);

    // ---- reductions ----

    /** out[N] = op over the last dimension of x[N, C] (see {@link ReduceOp}). */
    void reduceRows(ReduceOp op, Tensor out, Tensor x);

    /** out[C] += Σ_n x[n, :] for x[N, C]: the bias gradient of a linear layer; summed in row order. */
    void addColumnSums(Tensor out, Tensor x);

    /** Σ x² over all elements, accumulated in double in a fixed order. */
    double sumOfSquares(Tensor x);

    /**
     * out[0] += scale·Σ x over every element of x (out: one F32 element), the sum formed in double in
     * a fixed order: a training step's scalars (loss sums, metrics) accumulate on the device and are
     * read back once per step.
     */
    void addSum(Tensor out, Tensor x, float scale);

    /** out[0] += scale·Σ x², like {@link #addSum}: the gradient norm's square stays on the device. */
    void addSumOfSquares(Tensor out, Tensor x, float scale);

    /** √(Σ over tensors of Σ x²): the global gradient norm used for clipping. */
    default double globalL2Norm(List<Tensor> tensors) {
        double s = 0;
        for (Tensor t : tensors) {
            s += sumOfSquares(t);
        }
        return Math.sqrt(s);
    }

    // ---- softmax ----

    /** y[N, C] = softmax over the last dimension of x[N, C]; a row of all −∞ gives zeros; y may be x. */
    void softmaxForward(Tensor y, Tensor x);

    /** dx[N, C] += y ⊙ (dy − Σ_c dy·y). */
    void softmaxBackward(Tensor dx, Tensor dy, Tensor y);

    // ---- normalization ----

    /** out[N, C] = (x − mean)·rstd·weight[C] + bias[C]; saves mean[N] and rstd[N]. */
    void layerNormForward(Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor weight, Tensor bias, float eps);

    /** dx[N, C] +=, dweight[C] +=, dbias[C] += the gradients of {@link #layerNormForward}. */
    void layerNormBackward(Tensor dx, Tensor dweight, Tensor dbias, Tensor dy, Tensor x, Tensor weight,
                           Tensor mean, Tensor rstd);

    /** out[N, C] = x·rstd·weight[C], rstd = 1/√(mean(x²) + eps); saves rstd[N]. */
    void rmsNormForward(Tensor out, Tensor rstd, Tensor x, Tensor weight, float eps);

    /** dx[N, C] +=, dweight[C] += the gradients of {@link #rmsNormForward}. */
    void rmsNormBackward(Tensor dx, Tensor dweight, Tensor dy, Tensor x, Tensor weight, Tensor rstd);

    /**
     * Residual add fused with the LayerNorm that follows it (a pre-LN block's h = x + m; ln2(h)):
     * sum = a + b, then out, mean, rstd as {@link #layerNormForward} of sum, in one pass over the
     * rows. sum is kept for the backward; sum may be a, out must not alias a, b or sum.
     */
    default void addLayerNormForward(Tensor sum, Tensor out, Tensor mean, Tensor rstd, Tensor a, Tensor b, Tensor weight,
                                     Tensor bias, float eps) {
        binary(BinaryOp.ADD, sum, a, b);
        layerNormForward(out, mean, rstd, sum, weight, bias, eps);
    }

    /**
     * {@link #layerNormBackward} fused with the residual stream's gradient: dx += LN′(dy) + dres,
     * with dweight and dbias += as there; dres has dx's shape and must not alias it.
     */
    default void layerNormBackwardAdd(Tensor dx, Tensor dweight, Tensor dbias, Tensor dy, Tensor dres, Tensor x,
                                      Tensor weight, Tensor mean, Tensor rstd) {
        layerNormBackward(dx, dweight, dbias, dy, x, weight, mean, rstd);
        binary(BinaryOp.ADD, dx, dx, dres);
    }

    // ---- activations ----

    /** GELU, tanh approximation (GPT-2); out may be x. */
    void geluForward(Tensor out, Tensor x);

    /** dx += GELU'(x)·dy. */
    void geluBackward(Tensor dx, Tensor dy, Tensor x);

    /**
     * The bias of the GEMM before a GELU fused with it: h[N, C] += bias[C] in place (h is what the
     * backward reads), then out = GELU(h), in one pass; tanhExp[N, C] gets GELU's tanh
     * intermediate e = exp(2u), u = √(2/π)·(h + 0.044715·h³) (tanh u = 1 − 2/(e + 1)), kept so
     * that {@link #geluBackwardBias} need not recompute it, by a backend whose backward reads it; one
     * that recomputes (this default) may leave tanhExp unwritten. out, tanhExp and h must not alias.
     */
    default void biasGeluForward(Tensor out, Tensor tanhExp, Tensor h, Tensor bias) {
        binary(BinaryOp.ADD, h, h, bias);
        geluForward(out, h);
    }

    /**
     * GELU's backward fused with the bias gradient of the GEMM before it: dx[N, C] = GELU′(x)·dy
     * (written, not accumulated, which spares zeroing it) and dbias[C] += Σ_n dx[n, :]. tanhExp is
     * what {@link #biasGeluForward} kept for x; a backend may read it or recompute it (this
     * default recomputes). dx must not alias dy, x or tanhExp.
     */
    default void geluBackwardBias(Tensor dx, Tensor dbias, Tensor dy, Tensor x, Tensor tanhExp) {
        fill(dx, 0f);
        geluBackward(dx, dy, x);
        addColumnSums(dbias, dx);
    }

    // ---- dropout ----

    /**
     * out = x ⊙ keep / (1 − p), where element i is kept when {@link DropoutMask#keeps}(seed, i, p):
     * a counter-based mask, so backward and a resumed run regenerate it from the seed alone. out may be x.
     */
    void dropoutForward(Tensor out, Tensor x, float p, long seed);

    /** dx += dy ⊙ keep / (1 − p) with the mask of {@link #dropoutForward} for the same seed. */
    void dropoutBackward(Tensor dx, Tensor dy, float p, long seed);

    /**
     * A residual branch's output bias, dropout and the residual add in one pass: out[N, C] =
     * residual + (x + bias[C]) ⊙ keep / (1 − p), with the mask of {@link #dropoutForward} for
     * (seed, element index); p = 0 drops nothing. Its backward is the branch's: the residual
     * passes dy on, the branch gets {@link #dropoutBackward}'s gradient and the bias that
     * gradient's column sums. out may be x, not residual.
     */
    default void biasDropoutAddForward(Tensor out, Tensor x, Tensor bias, Tensor residual, float p, long seed) {
        binary(BinaryOp.ADD, out, x, bias);
        if (p > 0) {
            dropoutForward(out, out, p, seed);
        }
        binary(BinaryOp.ADD, out, out, residual);
    }

    // ---- embeddings ----

    /** out[N, C] = table[ids[n], :] for ids[N] (I32), table[V, C]. */
    void embeddingForward(Tensor out, Tensor ids, Tensor table);

    /** dtable[ids[n], :] += dout[n, :]; summed in token order, so the result is deterministic. */
    void embeddingBackward(Tensor dtable, Tensor dout, Tensor ids);

    // ---- loss ----

    /**
     * losses[N] = −log softmax(logits[N, V])[targets[n]]; rows whose target is {@code ignoreIndex}
     * get loss 0.
     */
    void crossEntropyForward(Tensor losses, Tensor logits, Tensor targets, int ignoreIndex);

    /**
     * The forward above and, in the same pass, dlogits[N, V] = (softmax − onehot(target))·dlossScale
     * (written, not accumulated; zero on ignored rows). dlogits may be logits, which saves V·N floats.
     */
    void crossEntropyForwardBackward(Tensor losses, Tensor dlogits, Tensor logits, Tensor targets,
                                     int ignoreIndex, float dlossScale);

    // ---- optimizer ----

    /** One AdamW step over flat buffers of equal length: params, grads, first and second moments. */
    void adamW(Tensor params, Tensor grads, Tensor m, Tensor v, AdamW step);

    // ---- attention ----
    //
    // Packed-sequence kernels take their offsets as a Varlen: the I32 tensor a device kernel reads
    // and the same offsets on the host, with the longest sequence, for the launch and CPU loops (as
    // flash-attention's varlen API takes cu_seqlens and max_seqlen). They never read offsets back;
    // the host offsets must cover the tensors' rows, and the reference backend checks that the
    // device holds the same values.

    /**
     * FlashAttention forward over packed variable-length sequences (see {@link Attention} for the
     * layout; cuSeqlensQ covers q's rows, cuSeqlensK k's): out[Tq, NH, HS] and the per-row
     * log-sum-exp lse[NH, Tq] that the backward needs.
     * No Tq×Tk buffer is allocated.
     */
    void attentionForward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, Varlen cuSeqlensQ, Varlen cuSeqlensK,
                          Attention attn);

    /**
     * FlashAttention backward: dq, dk, dv += the gradients for upstream dout, recomputing scores
     * from q, k, v, out and lse.
     */
    void attentionBackward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out,
                           Tensor lse, Varlen cuSeqlensQ, Varlen cuSeqlensK, Attention attn);

    // ---- linear attention ----

    /**
     * Causal linear attention (Katharopoulos et al. 2020) over packed sequences (see
     * {@link LinearAttention}): q and k are feature-mapped, non-negative [T, NH·F]; v and out
     * [T, NH·D]; per head, out[t] = Σ_{j≤t} (q_t·k_j) v_j / (q_t·Σ_{j≤t} k_j + eps), never across
     * sequences. Blockwise, with no T×F×D buffer; out must not alias q, k or v.
     */
    void linearAttentionForward(Tensor out, Tensor q, Tensor k, Tensor v, Varlen cuSeqlens, int heads, float eps);

    /** dq, dk, dv += the gradients of {@link #linearAttentionForward} for upstream dout, recomputing its state. */
    void linearAttentionBackward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v,
                                 Varlen cuSeqlens, int heads, float eps);

    /**
     * Recurrent decoding of one sequence: for each of the t new tokens in order, per head,
     * state[NH, F, D] += k vᵀ and norm[NH, F] += k, then out = qᵀ·state / (q·norm + eps) — O(F·D)
     * per token, constant memory. Zeroed state and norm start a sequence; stepping every token of
     * a sequence gives what {@link #linearAttentionForward} gives. out [t, NH·D] must not alias q, k or v.
     */
    void linearAttentionStep(Tensor out, Tensor state, Tensor norm, Tensor q, Tensor k, Tensor v, int heads, float eps);

    // ---- causal long convolution (S4D, H3) ----

    /**
     * Causal long convolution over packed variable-length sequences (see {@link CausalConv}):
     * y[t, c] = Σ_{j ≤ min(t, L − 1)} k[j, c]·u[t − j, c] within each sequence, for u, y [T, C]
     * and k [L, C] with any L ≥ 1 (shorter than a sequence: taps beyond L are zero). Never mixes
     * sequences; y must not alias u.
     */
    void causalConvForward(Tensor y, Tensor u, Tensor k, Varlen cuSeqlens);

    /** du[T, C] +=, dk[L, C] += the gradients of {@link #causalConvForward} for upstream dy. */
    void causalConvBackward(Tensor du, Tensor dk, Tensor dy, Tensor u, Tensor k, Varlen cuSeqlens);

    // ---- diagonal state-space convolution (S4D, H3's diagonal SSM) ----

    /**
     * y[T, C] = the causal convolution of u[T, C] with the S4D kernel K[j, c] = 2·Re(Σ_n w_n·Ā_n^j)
     * of logDt [C], aRe, aIm [C, N] and c [C, N, 2] (see {@link Ssm}), within each packed sequence.
     * FlashConv: blocks of {@code block} tokens are convolved with the kernel's first {@code block}
     * lags and earlier blocks reach later ones through the N complex states per channel, so cost
     * stays near-linear in T. The D skip term is not included; y must not overlap u.
     */
    void ssmConvForward(Tensor y, Tensor u, Tensor logDt, Tensor aRe, Tensor aIm, Tensor c, Varlen cuSeqlens,
                        int block);

    /** du, dlogDt, daRe, daIm, dc += the gradients of {@link #ssmConvForward} for upstream dy. */
    void ssmConvBackward(Tensor du, Tensor dlogDt, Tensor daRe, Tensor daIm, Tensor dc, Tensor dy, Tensor u,
                         Tensor logDt, Tensor aRe, Tensor aIm, Tensor c, Varlen cuSeqlens, int block);

    /**
     * Recurrent decoding of t new tokens u[t, C] of one sequence in order: per channel and mode,
     * x ← Ā·x + u_t on state [C, N, 2] (complex x), then y_t = 2·Re(Σ_n w_n·x_n) — O(N·C) per token.
     * A zeroed state starts a sequence; stepping every token gives what {@link #ssmConvForward} gives.
     * y must not overlap u or state.
     */
    void ssmStep(Tensor y, Tensor state, Tensor u, Tensor logDt, Tensor aRe, Tensor aIm, Tensor c);
    // ---- feature maps: unary backward, FAVOR+ ----

    /**
     * dx += dy·f′(x) elementwise for f = {@code op}, with {@link UnaryOp#derivative} as the
     * reference (and its convention where f has no derivative); dx may alias dy.
     */
    void unaryBackward(UnaryOp op, Tensor dx, Tensor dy, Tensor x);

    /**
     * Performer's positive random features (FAVOR+, see {@link FavorFeatures}): per row t and head
     * h, with x_h = x[t, h·D … h·D + D) and w_i the rows of w,
     * out[t, h·M + i] = exp(w_i·x_h − |x_h|²/2 − s)/√M, so that φ(q)·φ(k) is an unbiased estimate of
     * exp(q·k) (times e^(−s)) for w_i ~ N(0, I). For queries ({@code query}) the stabiliser s is
     * max_i w_i·x_h, per row and head: it cancels in linear attention's ratio. For keys s = 0,
     * because a stabiliser over the sequence would look at future tokens and make recurrent
     * decoding differ from the full forward; the exponent w_i·x − |x|²/2 = (|w_i|² − |w_i − x|²)/2
     * is then at most |w_i|²/2, so keys stay finite for any x. out must not alias x.
     */
    void favorFeatures(Tensor out, Tensor x, Tensor w, int heads, boolean query);

    /**
     * dx += the gradient of {@link #favorFeatures} for upstream dout, given its output out. The
     * query stabiliser is differentiated too (one-hot at the first argmax), so the gradient is
     * that of the function computed. w is fixed (redrawn, never trained) and gets none.
     */
    void favorFeaturesBackward(Tensor dx, Tensor dout, Tensor out, Tensor x, Tensor w, int heads, boolean query);

    // ---- grouped GEMM (dropless mixture of experts) ----

    /**
     * One GEMM over variable-size groups of rows (see {@link GroupedGemm} for the two forms):
     * group e of the rows of a (offsets[e] ≤ row &lt; offsets[e+1], I32 offsets [E + 1]) meets
     * expert e's matrix, so every token is computed and none is padded beyond the GEMM's own
     * blocking. Per group the result is what {@link #gemm} gives for that group's product, bit for
     * bit. c must not overlap a or b.
     */
    void groupedGemm(Gemm g, Tensor c, Tensor a, Tensor b, Tensor offsets);

    // ---- batch-reduce and block-sparse GEMM (Tensor Processing Primitives) ----

    /**
     * Batch-reduce GEMM, {@code C = beta·C + alpha·Σᵢ op(Aᵢ)·op(Bᵢ)} over the pairs of two equal,
     * non-empty lists, every pair laid out by {@code g} (batch 1; leading dimensions apply to each
     * Aᵢ, Bᵢ and C). {@link Brgemm} builds the lists for offset and stride addressing. C must not
     * overlap any Aᵢ or Bᵢ. This default runs one {@link #gemm} per pair; a backend may sum in
     * another order (within fp32 rounding of it).
     */
    default void brgemm(Gemm g, Tensor c, List<Tensor> a, List<Tensor> b) {
        Brgemm.check(g, c, a, b);
        gemm(g, c, a.get(0), b.get(0));
        Gemm rest = g.scaled(g.alpha(), 1f);
        for (int i = 1; i < a.size(); i++) {
            gemm(rest, c, a.get(i), b.get(i));
        }
    }

    /**
     * Block-sparse linear forward, {@code y = x·Wᵀ} for x [T, layout.cols()], y [T, layout.rows()]
     * and W [layout.rows(), layout.cols()] stored compressed as w [layout.nnz(), bs, bs]: the
     * non-zero blocks in CSR order, each row-major (out × in). Overwrites y; a block row without
     * blocks gives zeros. Each output block row is one {@link #brgemm} over its blocks. y must
     * not overlap x or w. Usage: a layer holds a {@link BlockLayout} and w; its backward calls
     * {@link #blockSparseLinearBackwardInput} and {@link #blockSparseLinearBackwardWeight}.
     */
    default void blockSparseLinear(Tensor y, Tensor x, Tensor w, BlockLayout layout) {
        int t = Brgemm.checkBlockSparse(layout, y, "y", layout.rows(), x, "x", layout.cols(), w, "w");
        int bs = layout.blockSize();
        if (layout.hasEmptyRow()) {
            fill(y, 0f);
        }
        Gemm g = new Gemm(false, true, t, bs, bs, layout.cols(), bs, layout.rows(), 1f, 0f, 1, 0, 0, 0);
        for (int r = 0; r < layout.rowBlocks(); r++) {
            int lo = layout.rowStart(r);
            int hi = layout.rowStart(r + 1);
            if (hi == lo) {
                continue;
            }
            ArrayList<Tensor> as = new ArrayList<>(hi - lo);
            ArrayList<Tensor> ws = new ArrayList<>(hi - lo);
            for (int blk = lo; blk < hi; blk++) {
                as.add(x.view(layout.col(blk) * bs, (int) g.spanA()));
                ws.add(w.view(blk * bs * bs, bs * bs));
            }
            brgemm(g, y.view(r * bs, (int) g.spanC()), as, ws);
        }
    }

    /**
     * The input gradient of {@link #blockSparseLinear}: {@code dx += dy·W} for dy [T,
     * layout.rows()], dx [T, layout.cols()]; each input block column is one {@link #brgemm} over
     * the blocks of that column. dx must not overlap dy or w.
     */
    default void blockSparseLinearBackwardInput(Tensor dx, Tensor dy, Tensor w, BlockLayout layout) {
        int t = Brgemm.checkBlockSparse(layout, dx, "dx", layout.cols(), dy, "dy", layout.rows(), w, "w");
        int bs = layout.blockSize();
        Gemm g = new Gemm(false, false, t, bs, bs, layout.rows(), bs, layout.cols(), 1f, 1f, 1, 0, 0, 0);
        for (int c = 0; c < layout.colBlocks(); c++) {
            int lo = layout.colStart(c);
            int hi = layout.colStart(c + 1);
            if (hi == lo) {
                continue;
            }
            ArrayList<Tensor> ds = new ArrayList<>(hi - lo);
            ArrayList<Tensor> ws = new ArrayList<>(hi - lo);
            for (int e = lo; e < hi; e++) {
                ds.add(dy.view(layout.rowOf(e) * bs, (int) g.spanA()));
                ws.add(w.view(layout.blockOf(e) * bs * bs, bs * bs));
            }
            brgemm(g, dx.view(c * bs, (int) g.spanC()), ds, ws);
        }
    }

    /**
     * The weight gradient of {@link #blockSparseLinear}, on the non-zero blocks only: {@code
     * dw[b] += dy[:, r-block]ᵀ·x[:, c-block]} for each CSR block b = (r, c), dw [nnz, bs, bs]
     * like w: one {@link #gemmBatched} over all blocks. dw must not overlap dy or x.
     */
    default void blockSparseLinearBackwardWeight(Tensor dw, Tensor dy, Tensor x, BlockLayout layout) {
        int t = Brgemm.checkBlockSparse(layout, dy, "dy", layout.rows(), x, "x", layout.cols(), dw, "dw");
        int bs = layout.blockSize();
        Gemm g = new Gemm(true, false, bs, bs, t, layout.rows(), layout.cols(), bs, 1f, 1f, 1, 0, 0, 0);
        int nnz = layout.nnz();
        ArrayList<Tensor> cs = new ArrayList<>(nnz);
        ArrayList<Tensor> ds = new ArrayList<>(nnz);
        ArrayList<Tensor> xs = new ArrayList<>(nnz);
        for (int r = 0; r < layout.rowBlocks(); r++) {
            for (int blk = layout.rowStart(r); blk < layout.rowStart(r + 1); blk++) {
                cs.add(dw.view(blk * bs * bs, bs * bs));
                ds.add(dy.view(r * bs, (int) g.spanA()));
                xs.add(x.view(layout.col(blk) * bs, (int) g.spanB()));
            }
        }
        if (nnz > 0) {
            gemmBatched(g, cs, ds, xs);
        }
    }

    /**
     * out[C, N] = x[N, C]ᵀ (x seen as [N, C], see the class comment; out must hold C·N elements
     * and not overlap x). This default goes through host doubles, exact for every floating dtype;
     * backends override it with an on-device kernel.
     */
    default void transpose(Tensor out, Tensor x) {
        Brgemm.checkTranspose(out, x);
        int n = x.rows();
        int c = x.cols();
        double[] in = new double[x.numel()];
        copyToHost(in, x);
        double[] t = new double[in.length];
        for (int i = 0; i < n; i++) {
            for (int j = 0; j < c; j++) {
                t[j * n + i] = in[i * c + j];
            }
        }
        copyFromHost(out, t);
    }

    // ==== mixture-of-experts routing (dropless, MegaBlocks-style; see MoeRouting) ====

    /**
     * Per row of router scores x [T, E] (see {@link TopK}): the k largest, in descending order,
     * into values [T, k] F32 and their expert ids into indices [T, k] I32; equal scores go lower
     * index first. A NaN score is an error naming its row and column. values must not overlap x.
     */
    void topK(Tensor values, Tensor indices, Tensor x, int k);

    /**
     * offsets [E + 1] I32 = the exclusive prefix sum of the histogram of expert ids in indices [N]
     * (each in [0, E)): expert e's entries will occupy [offsets[e], offsets[e + 1]) once grouped.
     */
    void expertOffsets(Tensor offsets, Tensor indices, int experts);

    /**
     * order [N] I32: the stable permutation grouping entries by expert, order[offsets[e] + r] = the
     * index of the r-th entry (in index order) whose id is e (see {@link MoeRouting}). offsets must
     * be what {@link #expertOffsets} gives for indices.
     */
    void permutation(Tensor order, Tensor indices, Tensor offsets);

    /**
     * out[i, :] = x[rows[i], :] for x [R, C], rows [N] I32 in [0, R), out [N, C] (see {@link RowMap});
     * rows[i] = −1 marks an empty slot and gives a zero row. Any other id outside [0, R) is an
     * error naming its position and value. Its backward is {@link #scatterAddRows}(dx, dout, rows,
     * null); out must not overlap x.
     */
    void gatherRows(Tensor out, Tensor x, Tensor rows);

    /**
     * out[rows[i], :] += weights[i]·x[i, :] for x [N, C], out [R, C], weights [N] F32 or null (all 1);
     * rows[i] = −1 marks an empty slot, which adds nothing, and any other id must be in [0, R).
     * Each destination row sums its contributions in increasing i, whatever the thread count, so
     * the result is deterministic. Its backward in x is {@link #gatherRows}(dx, dout, rows) scaled
     * row-wise by the weights; out must not overlap x.
     */
    void scatterAddRows(Tensor out, Tensor x, Tensor rows, Tensor weights);

    // ==== mixture-of-experts capacity, gates and router gradients (Switch-style; see MoeRouting) ====

    /**
     * rows[i] = entries[i] / k for I32 rows and entries of one length: the token row t of each
     * routed entry t·k + j; entries[i] = −1 (an empty slot) gives −1, any other negative value is
     * an error naming its position. k ≥ 1; rows may be entries.
     */
    void entryTokens(Tensor rows, Tensor entries, int k);

    /**
     * Switch-style capacity: slots [E·capacity] I32, with E = offsets.numel() − 1, gets
     * slots[e·capacity + r] = order[offsets[e] + r] for r &lt; min(count_e, capacity) and −1 for
     * the empty rest, count_e = offsets[e + 1] − offsets[e]. So each expert keeps its first
     * {@code capacity} entries in entry (= token) order and drops the others. order [N] and
     * offsets [E + 1] are what {@link #permutation} and {@link #expertOffsets} give; offsets must
     * start at 0, not decrease and end at N. capacity ≥ 1.
     */
    void capacitySlots(Tensor slots, Tensor order, Tensor offsets, int capacity);

    /** out[i, :] = s[i]·x[i, :] for x [N, C] F32, s [N] F32 (gates); out has x's shape and may be x. */
    void scaleRows(Tensor out, Tensor x, Tensor s);

    /**
     * The backward of {@link #topK}'s gather of values: dx[t, indices[t, j]] += dvalues[t, j] for
     * dx [T, E], dvalues [T, k] F32 and indices [T, k] I32, each id in [0, E) (checked, named in
     * the error). Accumulates; dx must not overlap dvalues.
     */
    void topKBackward(Tensor dx, Tensor dvalues, Tensor indices);

    /**
     * out[i] = {@link Noise#uniform}(seed, i, lo, hi), uniform in [lo, hi) for finite lo &lt; hi: a
     * pure function of (seed, i), so the values do not depend on threads or backend. For
     * Switch's multiplicative router jitter (lo = 1 − ε, hi = 1 + ε). out is F32 of any shape.
     */
    void uniformNoise(Tensor out, float lo, float hi, long seed);

    // ---- sketched attention (Skeinformer) ----

    /**
     * out[T, NH·HS] = {@link Skein}'s sketched attention of q, k, v [T, NH·HS] over the packed
     * sequences, its draws from {@code seed}. This default computes on the host from copies of the
     * operands (its cost is linear in T per head, far below the transfers' on a CPU backend).
     */
    default void skeinForward(Tensor out, Tensor q, Tensor k, Tensor v, Varlen cuSeqlens, Skein s, long seed) {
        int t = cuSeqlens.tokens();
        s.check(t, t, out, q, k, v);
        double[] o = new double[out.numel()];
        s.forward(o, host(q), host(k), host(v), cuSeqlens.host(), seed);
        copyFromHost(out, o);
    }

    /** dq, dk, dv += the gradients of {@link #skeinForward} for upstream dout, with the same draws (constants). */
    default void skeinBackward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v,
                               Varlen cuSeqlens, Skein s, long seed) {
        int t = cuSeqlens.tokens();
        s.check(t, t, dout, q, k, v);
        s.check(t, t, dq, dq, dk, dv);
        double[] gq = host(dq);
        double[] gk = host(dk);
        double[] gv = host(dv);
        s.backward(gq, gk, gv, host(dout), host(q), host(k), host(v), cuSeqlens.host(), seed);
        copyFromHost(dq, gq);
        copyFromHost(dk, gk);
        copyFromHost(dv, gv);
    }

    /**
     * Causal {@link Skein} decoding of one sequence: out and q [n, NH·HS] for positions
     * start..start+n−1, k and v [start + n, NH·HS] every key and value of the sequence so far; gives
     * the rows {@link #skeinForward} gives those positions.
     */
    default void skeinStep(Tensor out, Tensor q, Tensor k, Tensor v, int start, Skein s, long seed) {
        int n = q.rows();
        s.check(n, start + n, out, q, k, v);
        double[] o = new double[out.numel()];
        s.step(o, host(q), host(k), host(v), start, n, seed);
        copyFromHost(out, o);
    }

    private double[] host(Tensor t) {
        double[] a = new double[t.numel()];
        copyToHost(a, t);
        return a;
    }
}
