package org.kindling.models.config;

/**
 * The model-wide keys a layer spec falls back to when it does not set its own.
 *
 * @param dModel channels C
 * @param nHead {@code n_head}, or null when the config has none
 * @param nKvHead {@code n_kv_head}, or null when the config has none
 * @param mlpRatio {@code mlp_ratio}
 * @param maxSeq {@code max_seq}, the longest sequence; 0 when the model has no limit
 */
public record LayerDefaults(int dModel, Integer nHead, Integer nKvHead, int mlpRatio, int maxSeq) {
    /** Defaults of a model without a sequence limit. */
    public LayerDefaults(int dModel, Integer nHead, Integer nKvHead, int mlpRatio) {
        this(dModel, nHead, nKvHead, mlpRatio, 0);
    }
}
