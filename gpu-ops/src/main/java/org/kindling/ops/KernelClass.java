package org.kindling.ops;

import java.lang.reflect.Method;
import java.util.Locale;
import java.util.Set;

/**
 * The classes a {@link Profiler} sorts time, FLOPs and bytes into, after Ivanov et al., "Data
 * movement is all you need" (tensor contractions, statistical normalisations, elementwise), split
 * further as a transformer step's kernels fall. Every {@link Backend} kernel maps to one class by
 * {@link #of}; {@link #COMMUNICATION} is the time a trainer waits in its gradient sync.
 */
public enum KernelClass {
    /** Matrix products: gemm, batched, grouped and batch-reduce gemm, block-sparse linear products. */
    GEMM,
    /** Token mixers: FlashAttention, linear attention and its feature maps, long and state-space convolutions. */
    ATTENTION,
    /** Statistical normalisations: layer norm, RMS norm, softmax. */
    NORMALIZATION,
    /** Elementwise maps, activations, dropout and row or column reductions. */
    ELEMENTWISE,
    /** Cross-entropy. */
    LOSS,
    /** The AdamW update. */
    OPTIMIZER,
    /** Embedding gather and its scatter-add. */
    EMBEDDING,
    /** Host transfers, fills, copies and transposes, mixture-of-experts routing, noise. */
    OTHER,
    /** Time inside the gradient sync (all-reduces, waiting for the other workers). */
    COMMUNICATION;

    /** Backend methods that report on the backend rather than run a kernel. */
    static final Set<String> NOT_KERNELS = Set.of("name", "gemmImpl", "allocateStore");

    /** The lower-case name the profile table prints, e.g. {@code gemm}. */
    public String label() {
        return name().toLowerCase(Locale.ROOT);
    }

    /**
     * The class of a {@link Backend} kernel, or null for a method that runs none ({@code name},
     * {@code gemmImpl}, {@code allocateStore}).
     *
     * @throws IllegalArgumentException for a Backend method this table does not know: a new kernel
     *     must be given a class here
     */
    public static KernelClass of(Method m) {
        String name = m.getName();
        if (NOT_KERNELS.contains(name)) {
            return null;
        }
        return switch (name) {
            case "gemm", "gemmBatched", "groupedGemm", "brgemm", "blockSparseLinear", "blockSparseLinearBackwardInput",
                 "blockSparseLinearBackwardWeight" -> GEMM;
            case "attentionForward", "attentionBackward", "linearAttentionForward", "linearAttentionBackward",
                 "linearAttentionStep", "causalConvForward", "causalConvBackward", "ssmConvForward", "ssmConvBackward",
                 "ssmStep", "favorFeatures", "favorFeaturesBackward", "skeinForward", "skeinBackward", "skeinStep" -> ATTENTION;
            case "layerNormForward", "layerNormBackward", "rmsNormForward", "rmsNormBackward", "softmaxForward",
                 "softmaxBackward", "addLayerNormForward", "layerNormBackwardAdd" -> NORMALIZATION;
            case "unary", "unaryBackward", "affine", "binary", "geluForward", "geluBackward", "dropoutForward",
                 "dropoutBackward", "reduceRows", "addColumnSums", "sumOfSquares", "addSum", "addSumOfSquares",
                 "globalL2Norm", "scaleRows", "biasGeluForward", "geluBackwardBias", "biasDropoutAddForward" -> ELEMENTWISE;
            case "crossEntropyForward", "crossEntropyForwardBackward" -> LOSS;
            case "adamW" -> OPTIMIZER;
            case "embeddingForward", "embeddingBackward" -> EMBEDDING;
            case "copyFromHost", "copyToHost", "copyToStore", "copyFromStore", "fill", "copy", "transpose", "topK", "topKBackward",
                 "expertOffsets", "permutation", "gatherRows", "scatterAddRows", "entryTokens", "capacitySlots", "uniformNoise" -> OTHER;
            default -> throw new IllegalArgumentException("Backend." + name + " has no kernel class: add it to "
                    + KernelClass.class.getName() + ".of so profiles account for it");
        };
    }
}
