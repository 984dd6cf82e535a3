package org.kindling.models.mixers.linear;

import java.util.Map;
import org.kindling.models.config.ConfigReader;
import org.kindling.models.config.LayerDefaults;
import org.kindling.models.mixers.MixerSpec;
import org.kindling.models.mixers.TokenMixer;
import org.kindling.models.nn.LayerContext;

/**
 * Causal linear attention (Katharopoulos et al. 2020): softmax replaced by the kernel
 * φ(q)·φ(k) with φ = elu + 1, so decoding keeps an O(1) state per sequence.
 *
 * @param heads heads NH ({@code heads}, default {@code n_head}, else 1); HS = C / NH
 * @param eps added to the normaliser q·Σk ({@code eps}, default 1e-6)
 */
public record LinearAttentionSpec(int heads, double eps) implements MixerSpec {
    public static final String TYPE = "linear";
    static final double DEFAULT_EPS = 1e-6;

    public LinearAttentionSpec {
        checkScalars(heads, eps);
    }

    public static LinearAttentionSpec read(ConfigReader r, LayerDefaults d) {
        return new LinearAttentionSpec(heads(r, d), eps(r));
    }

    /** {@code heads}: default {@code n_head} (else one head), dividing d_model. */
    static int heads(ConfigReader r, LayerDefaults d) {
        int heads = r.integer("heads", d.nHead() != null ? d.nHead() : 1, 1);
        if (d.dModel() % heads != 0) {
            throw r.error("heads", "= " + heads + " does not divide d_model " + d.dModel());
        }
        return heads;
    }

    /** {@code eps}: positive in fp32 too, since the kernels take it as a float and need it above 0. */
    static double eps(ConfigReader r) {
        double eps = r.number("eps", DEFAULT_EPS);
        if (!((float) eps > 0) || !Float.isFinite((float) eps)) {
            throw r.error("eps", "must be a finite number above 0 in fp32 (at least about 1.4e-45), got " + eps);
        }
        return eps;
    }

    static void checkScalars(int heads, double eps) {
        if (heads < 1) {
            throw new IllegalArgumentException("linear attention heads must be at least 1, got " + heads);
        }
        if (!((float) eps > 0) || !Float.isFinite((float) eps)) {
            throw new IllegalArgumentException("linear attention eps must be finite and above 0 in fp32, got " + eps);
        }
    }

    @Override
    public String type() {
        return TYPE;
    }

    @Override
    public TokenMixer build(LayerContext ctx) {
        return new KernelAttention(ctx, heads, new FeatureMap.EluPlusOne(ctx.dModel() / heads), eps);
    }

    @Override
    public Map<String, Object> toMap() {
        Map<String, Object> m = ConfigReader.ordered();
        m.put("type", TYPE);
        m.put("heads", heads);
        m.put("eps", eps);
        return m;
    }
}
