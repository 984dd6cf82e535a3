package org.kindling.models.channel;

import java.util.Map;
import org.kindling.models.config.ConfigReader;
import org.kindling.models.config.LayerDefaults;
import org.kindling.models.nn.LayerContext;

/**
 * GPT-2's MLP.
 *
 * @param ratio hidden width as a multiple of C ({@code ratio}, default {@code mlp_ratio})
 */
public record MlpSpec(int ratio) implements ChannelSpec {
    public static final String TYPE = "mlp";

    public static MlpSpec read(ConfigReader r, LayerDefaults d) {
        return new MlpSpec(r.integer("ratio", d.mlpRatio(), 1));
    }

    @Override
    public String type() {
        return TYPE;
    }

    @Override
    public ChannelMixer build(LayerContext ctx) {
        return new Mlp(ctx, ratio);
    }

    @Override
    public Map<String, Object> toMap() {
        Map<String, Object> m = ConfigReader.ordered();
        m.put("type", TYPE);
        m.put("ratio", ratio);
        return m;
    }
}
