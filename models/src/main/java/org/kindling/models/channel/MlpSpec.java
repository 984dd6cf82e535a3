package org.kindling.models.channel;

import java.util.Map;
import org.kindling.models.config.ConfigReader;
import org.kindling.models.config.LayerDefaults;
import org.kindling.models.nn.LayerContext;
import org.kindling.models.nn.LinearSpec;

/**
 * GPT-2's MLP.
 *
 * @param ratio hidden width as a multiple of C ({@code ratio}, default {@code mlp_ratio})
 * @param bias whether both projections have biases ({@code bias}, default true as in GPT-2; a
 *     mixture's experts have none, so a one-expert mixture equals the MLP without them)
 * @param linear the projections' kind ({@code linear} and its {@code pixelfly_*} keys, see {@link LinearSpec})
 */
public record MlpSpec(int ratio, boolean bias, LinearSpec linear) implements ChannelSpec {
    public static final String TYPE = "mlp";

    public static MlpSpec read(ConfigReader r, LayerDefaults d) {
        return new MlpSpec(r.integer("ratio", d.mlpRatio(), 1), r.bool("bias", true), LinearSpec.read(r));
    }

    /** Dense projections. */
    public MlpSpec(int ratio, boolean bias) {
        this(ratio, bias, LinearSpec.DENSE);
    }

    /** GPT-2's MLP, with biases. */
    public MlpSpec(int ratio) {
        this(ratio, true);
    }

    @Override
    public String type() {
        return TYPE;
    }

    @Override
    public ChannelMixer build(LayerContext ctx) {
        return linear.dense() ? new Mlp(ctx, ratio, bias) : new StructuredMlp(ctx, ratio, bias, linear);
    }

    @Override
    public Map<String, Object> toMap() {
        Map<String, Object> m = ConfigReader.ordered();
        m.put("type", TYPE);
        m.put("ratio", ratio);
        m.put("bias", bias);
        linear.putInto(m);
        return m;
    }
}
