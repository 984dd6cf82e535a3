package org.kindling.models.mixers;

import java.util.Map;
import java.util.TreeMap;
import org.kindling.models.config.ConfigReader;
import org.kindling.models.config.LayerDefaults;
import org.kindling.models.mixers.attention.AttentionSpec;
import org.kindling.models.mixers.linear.KernelizedSpec;
import org.kindling.models.mixers.linear.LinearAttentionSpec;
import org.kindling.models.mixers.linear.PerformerSpec;
import org.kindling.models.mixers.skein.SkeinSpec;
import org.kindling.models.mixers.ssm.H3Spec;
import org.kindling.models.mixers.ssm.S4dSpec;

/**
 * The token mixers this build implements, by the {@code type} a config names. A new mixer is a
 * package under {@code mixers/} with its spec and layer, and one entry here.
 */
public final class Mixers {
    /** Reads and validates one layer's spec; errors name the file, the layer and the key. */
    @FunctionalInterface
    public interface Reader {
        MixerSpec read(ConfigReader r, LayerDefaults defaults);
    }

    private static final Map<String, Reader> REGISTRY = new TreeMap<>(Map.of(
            AttentionSpec.TYPE, AttentionSpec::read,
            H3Spec.TYPE, H3Spec::read,
            KernelizedSpec.TYPE, KernelizedSpec::read,
            LinearAttentionSpec.TYPE, LinearAttentionSpec::read,
            PerformerSpec.TYPE, PerformerSpec::read,
            S4dSpec.TYPE, S4dSpec::read,
            SkeinSpec.TYPE, SkeinSpec::read));

    private Mixers() {
    }

    /** The registered type names, sorted. */
    public static java.util.Set<String> types() {
        return REGISTRY.keySet();
    }

    /** The spec of a mixer type with every key at its default, e.g. for a bench's {@code --mixer h3}. */
    public static MixerSpec named(String type, LayerDefaults defaults) {
        Map<String, Object> m = ConfigReader.ordered();
        m.put("type", type);
        return read(new ConfigReader("--mixer", "mixer", m), defaults);
    }

    /** Reads a spec mapping (its {@code type} key picks the reader) and rejects keys it does not know. */
    public static MixerSpec read(ConfigReader r, LayerDefaults defaults) {
        String type = r.string("type", null);
        Reader reader = REGISTRY.get(type);
        if (reader == null) {
            throw r.error("type", "is \"" + type + "\"; known token mixers: " + String.join(", ", REGISTRY.keySet()));
        }
        MixerSpec spec = reader.read(r, defaults);
        r.finish();
        return spec;
    }
}
