package org.kindling.ops;

/**
 * What an attention call computes, shaped like flash-attention's {@code flash_attn_varlen_func}.
 * Tensors are packed with no padding: q[Tq, NH, HS], k and v[Tk, NKV, HS], out like q, lse[NH, Tq];
 * sequence b owns rows cu_seqlens[b] ≤ row &lt; cu_seqlens[b+1] (I32 tensors of B+1 offsets, the
 * list offsets of the Arrow token column). Query head h reads key/value head h / (NH / NKV)
 * (grouped-query and multi-query attention). Causal masking aligns the last query with the last
 * key of each sequence (flash-attention ≥ 2.1), so a query chunk can attend a longer KV cache.
 *
 * @param heads query heads NH
 * @param kvHeads key/value heads NKV, dividing NH
 * @param headDim HS, 1..256
 * @param softmaxScale multiplies q·k before the softmax; 1/√HS by default
 * @param causal query i attends keys j ≤ i + (Lk − Lq)
 * @param mask block-sparse layout, or null for dense; needs Lq = Lk per sequence
 */
public record Attention(int heads, int kvHeads, int headDim, float softmaxScale, boolean causal, BlockMask mask) {
    public static final int MAX_HEAD_DIM = 256;

    public Attention {
        if (heads < 1 || kvHeads < 1 || heads % kvHeads != 0) {
            throw new IllegalArgumentException("attention needs heads (" + heads + ") to be a positive multiple of kv heads ("
                    + kvHeads + ")");
        }
        if (headDim < 1 || headDim > MAX_HEAD_DIM) {
            throw new IllegalArgumentException("attention head dim must be in 1.." + MAX_HEAD_DIM + ", got " + headDim);
        }
        if (!(softmaxScale > 0) || !Float.isFinite(softmaxScale)) {
            throw new IllegalArgumentException("attention softmax scale must be finite and > 0, got " + softmaxScale);
        }
    }

    /** Dense, non-causal attention with scale 1/√headDim. */
    public static Attention of(int heads, int kvHeads, int headDim) {
        return new Attention(heads, kvHeads, headDim, (float) (1 / Math.sqrt(headDim)), false, null);
    }

    public Attention withCausal(boolean causal) {
        return new Attention(heads, kvHeads, headDim, softmaxScale, causal, mask);
    }

    public Attention withScale(float scale) {
        return new Attention(heads, kvHeads, headDim, scale, causal, mask);
    }

    public Attention withMask(BlockMask mask) {
        return new Attention(heads, kvHeads, headDim, softmaxScale, causal, mask);
    }

    /** Whether query i attends key j of a sequence with lq queries and lk keys. */
    public boolean attends(int i, int j, int lq, int lk) {
        if (causal && j > i + (lk - lq)) {
            return false;
        }
        return mask == null || mask.allowed(i / mask.blockSize(), j / mask.blockSize());
    }

    /** Query heads per key/value head. */
    public int group() {
        return heads / kvHeads;
    }

    /** The validated sequence layout of one call: offsets into the packed q and k rows. */
    public record Batch(int[] cuQ, int[] cuK, int totalQ, int totalK, int maxQ, int maxK) {
        public int sequences() {
            return cuQ.length - 1;
        }

        public int lengthQ(int b) {
            return cuQ[b + 1] - cuQ[b];
        }

        public int lengthK(int b) {
            return cuK[b + 1] - cuK[b];
        }
    }

    /** Checks the tensors of a call against this spec and the host offsets against their shapes. */
    public Batch check(Tensor q, Tensor k, Tensor v, Varlen cuSeqlensQ, Varlen cuSeqlensK) {
        requireF32(q, "q");
        requireF32(k, "k");
        requireF32(v, "v");
        int rowQ = heads * headDim;
        int rowK = kvHeads * headDim;
        if (q.numel() % rowQ != 0) {
            throw new IllegalArgumentException("q " + q + " is not a whole number of rows of NH·HS = " + rowQ);
        }
        if (k.numel() % rowK != 0 || v.numel() != k.numel()) {
            throw new IllegalArgumentException("k " + k + " and v " + v + " must both be [Tk, " + kvHeads + ", " + headDim + "]");
        }
        int[] cuQ = cuSeqlensQ.over(q.numel() / rowQ, "cu_seqlens_q", "q");
        int[] cuK = cuSeqlensK.over(k.numel() / rowK, "cu_seqlens_k", "k");
        if (cuQ.length != cuK.length) {
            throw new IllegalArgumentException("cu_seqlens_q has " + (cuQ.length - 1) + " sequences but cu_seqlens_k has "
                    + (cuK.length - 1));
        }
        int maxQ = cuSeqlensQ.maxSeqlen();
        int maxK = cuSeqlensK.maxSeqlen();
        for (int b = 0; mask != null && b + 1 < cuQ.length; b++) {
            int lq = cuQ[b + 1] - cuQ[b];
            int lk = cuK[b + 1] - cuK[b];
            if (lq != lk) {
                throw new IllegalArgumentException("block-sparse attention needs equal query and key lengths; sequence " + b
                        + " has " + lq + " queries and " + lk + " keys");
            }
        }
        if (mask != null && maxQ > mask.blocks() * mask.blockSize()) {
            throw new IllegalArgumentException(mask + " covers " + mask.blocks() * mask.blockSize()
                    + " tokens but a sequence has " + maxQ);
        }
        return new Batch(cuQ, cuK, q.numel() / rowQ, k.numel() / rowK, maxQ, maxK);
    }

    private static void requireF32(Tensor t, String what) {
        if (t.dtype() != DType.F32) {
            throw new IllegalArgumentException("attention " + what + " must be F32, got " + t);
        }
    }

    /** Out shapes: out like q, lse [NH, Tq]. */
    public void checkOutputs(Batch batch, Tensor out, Tensor lse) {
        if (out.numel() != batch.totalQ() * heads * headDim || out.dtype() != DType.F32) {
            throw new IllegalArgumentException("attention out " + out + " must be F32 [" + batch.totalQ() + ", " + heads + ", "
                    + headDim + "]");
        }
        if (lse.numel() != heads * batch.totalQ() || lse.dtype() != DType.F32) {
            throw new IllegalArgumentException("attention lse " + lse + " must be F32 [" + heads + ", " + batch.totalQ() + "]");
        }
    }
}
