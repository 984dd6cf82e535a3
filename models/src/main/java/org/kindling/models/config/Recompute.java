package org.kindling.models.config;

import java.util.Arrays;
import java.util.stream.Collectors;
import org.kindling.models.channel.ChannelSpec;

/** Activation recomputation in training ({@code train.recompute}). */
public enum Recompute {
    /** Every block keeps its saved activations from forward to backward. */
    NONE("none"),
    /** Every block keeps only its input; its backward runs its forward again first (bit-identical gradients). */
    FULL("full");

    private final String key;

    Recompute(String key) {
        this.key = key;
    }

    public String key() {
        return key;
    }

    /** Why this mode cannot train a model of {@code cfg}, naming the layer, or null when it can. */
    public String refusal(ModelConfig cfg) {
        if (this == FULL) {
            for (int l = 0; l < cfg.nLayer(); l++) {
                ChannelSpec cs = cfg.channelMixers().get(l);
                if (cs.notRecomputable() != null) {
                    return "full cannot recompute layer " + l + "'s channel mixer " + cs.type() + ": " + cs.notRecomputable();
                }
            }
        }
        return null;
    }

    /** The mode named {@code key}, or an error listing the names. */
    public static Recompute parse(String key) {
        for (Recompute r : values()) {
            if (r.key.equals(key)) {
                return r;
            }
        }
        throw new IllegalArgumentException("must be one of "
                + Arrays.stream(values()).map(Recompute::key).collect(Collectors.joining(", ")) + ", got '" + key + "'");
    }
}
