package org.kindling.models.channel;

import java.util.Map;
import org.kindling.models.nn.LayerContext;

/** A validated description of one layer's channel mixer, read by its {@link ChannelMixers} entry. */
public interface ChannelSpec {
    /** The registry name, the {@code type} key of the mapping. */
    String type();

    ChannelMixer build(LayerContext ctx);

    /** The prefix of the mixer's parameter names inside its block ({@code h.L.<name>.…}). */
    default String paramPrefix() {
        return type();
    }

    /** Parameters of the layer that a token does not use (a mixture's unvisited experts), for the active-parameter count. */
    default long inactiveParameters(int dModel) {
        return 0;
    }

    /**
     * Why a recomputed forward would not repeat this mixer's exactly (it talks to other workers or
     * reports metrics during the forward), or null when it can be recomputed.
     */
    default String notRecomputable() {
        return null;
    }

    /** The mapping {@link ChannelMixers#read} accepts, {@code type} first, every default filled in. */
    Map<String, Object> toMap();
}
