package org.kindling.models.channel;

import java.util.Map;
import java.util.TreeMap;
import org.kindling.models.config.ConfigReader;
import org.kindling.models.config.LayerDefaults;

/** The channel mixers this build implements, by the {@code type} a config names; a new one is one entry here. */
public final class ChannelMixers {
    /** Reads and validates one layer's spec; errors name the file, the layer and the key. */
    @FunctionalInterface
    public interface Reader {
        ChannelSpec read(ConfigReader r, LayerDefaults defaults);
    }

    private static final Map<String, Reader> REGISTRY = new TreeMap<>(Map.of(MlpSpec.TYPE, MlpSpec::read, MoeSpec.TYPE,
            MoeSpec::read, SparseFfnSpec.TYPE, SparseFfnSpec::read));

    private ChannelMixers() {
    }

    public static java.util.Set<String> types() {
        return REGISTRY.keySet();
    }

    /** Reads a spec mapping (its {@code type} key picks the reader) and rejects keys it does not know. */
    public static ChannelSpec read(ConfigReader r, LayerDefaults defaults) {
        String type = r.string("type", null);
        Reader reader = REGISTRY.get(type);
        if (reader == null) {
            throw r.error("type", "is \"" + type + "\"; known channel mixers: " + String.join(", ", REGISTRY.keySet()));
        }
        ChannelSpec spec = reader.read(r, defaults);
        r.finish();
        return spec;
    }
}
