package org.kindling.models.mixers.linear;

import java.util.Map;
import org.kindling.models.config.ConfigReader;
import org.kindling.models.config.LayerDefaults;
import org.kindling.models.mixers.MixerSpec;
import org.kindling.models.mixers.TokenMixer;
import org.kindling.models.nn.LayerContext;

/**
 * Performer's FAVOR+ attention (Choromanski et al. 2021): linear attention whose features are
 * positive orthogonal random features, φ(q)·φ(k) an unbiased estimate of softmax attention's
 * exp(q·k/√HS).
 *
 * @param heads heads NH ({@code heads}, default {@code n_head}, else 1); HS = C / NH
 * @param features random features M ({@code features}, default max(16, round(HS·ln HS)))
 * @param redraw optimizer steps between redraws of the features ({@code redraw}, 0 = never, default 1000)
 * @param eps added to the normaliser ({@code eps}, default 1e-6)
 */
public record PerformerSpec(int heads, int features, int redraw, double eps) implements MixerSpec {
    public static final String TYPE = "performer";
    static final int DEFAULT_REDRAW = 1000;

    public PerformerSpec {
        LinearAttentionSpec.checkScalars(heads, eps);
        if (features < 1) {
            throw new IllegalArgumentException("performer features must be at least 1, got " + features);
        }
        if (redraw < 0) {
            throw new IllegalArgumentException("performer redraw must be at least 0, got " + redraw);
        }
    }

    public static PerformerSpec read(ConfigReader r, LayerDefaults d) {
        int heads = LinearAttentionSpec.heads(r, d);
        int features = r.integer("features", defaultFeatures(d.dModel() / heads), 1);
        int redraw = r.integer("redraw", DEFAULT_REDRAW, 0);
        return new PerformerSpec(heads, features, redraw, LinearAttentionSpec.eps(r));
    }

    /** The paper's M = Θ(HS·log HS), at least 16 so tiny heads still average over a few features. */
    static int defaultFeatures(int headDim) {
        return (int) Math.max(16, Math.round(headDim * Math.log(headDim)));
    }

    @Override
    public String type() {
        return TYPE;
    }

    @Override
    public TokenMixer build(LayerContext ctx) {
        int hs = ctx.dModel() / heads;
        return new KernelAttention(ctx, heads, new FeatureMap.Favor(ctx, heads, hs, features, redraw), eps);
    }

    @Override
    public Map<String, Object> toMap() {
        Map<String, Object> m = ConfigReader.ordered();
        m.put("type", TYPE);
        m.put("heads", heads);
        m.put("features", features);
        m.put("redraw", redraw);
        m.put("eps", eps);
        return m;
    }
}
