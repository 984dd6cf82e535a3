package org.kindling.models.config;

/**
 * The model-wide keys a layer spec falls back to when it does not set its own.
 *
 * @param dModel channels C
 * @param nHead {@code n_head}, or null when the config has none
 * @param nKvHead {@code n_kv_head}, or null when the config has none
 * @param mlpRatio {@code mlp_ratio}
 */
public record LayerDefaults(int dModel, Integer nHead, Integer nKvHead, int mlpRatio) {
}
