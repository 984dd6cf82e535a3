package org.kindling.models.mixers;

import java.util.Map;
import org.kindling.models.nn.LayerContext;

/**
 * A validated description of one layer's token mixer, read from the config by its
 * {@link Mixers} entry: it builds the mixer and writes itself back as a config mapping.
 */
public interface MixerSpec {
    /** The registry name, the {@code type} key of the mapping. */
    String type();

    TokenMixer build(LayerContext ctx);

    /** The prefix of the mixer's parameter names inside its block ({@code h.L.<name>.…}). */
    default String paramPrefix() {
        return type();
    }

    /** The mapping {@link Mixers#read} accepts, {@code type} first, every default filled in. */
    Map<String, Object> toMap();
}
