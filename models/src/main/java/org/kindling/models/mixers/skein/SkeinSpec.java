package org.kindling.models.mixers.skein;

import java.util.Map;
import org.kindling.models.config.ConfigReader;
import org.kindling.models.config.LayerDefaults;
import org.kindling.models.mixers.MixerSpec;
import org.kindling.models.mixers.TokenMixer;
import org.kindling.models.nn.LayerContext;
import org.kindling.ops.Skein;

/**
 * Skeinformer's sketched attention (Chen et al. 2022), see {@link Skein}: the bidirectional mode
 * is the paper's; the causal mode (exact diagonal tile, sketched prefix) is our own extension for
 * a decoder.
 *
 * @param heads heads NH ({@code heads}, default {@code n_head}, else 1); HS = C / NH
 * @param samples columns sampled per head, and the causal tile ({@code samples}, default
 *     {@value #DEFAULT_SAMPLES}: the paper samples O(log n)·constant columns, and 64 keeps a
 *     row's cost near one tile of FlashAttention while covering sequences of a few thousand tokens)
 * @param pilot pilot query rows per head ({@code pilot}, bidirectional only, default {@code samples}, as the paper's reference)
 * @param causal the causal variant ({@code causal}, default true: our models are decoders)
 * @param adaptive adaptive row normalisation ({@code adaptive}, default true; false is the paper's ablation)
 */
public record SkeinSpec(int heads, int samples, int pilot, boolean causal, boolean adaptive) implements MixerSpec {
    public static final String TYPE = "skein";
    public static final int DEFAULT_SAMPLES = 64;

    public SkeinSpec {
        if (heads < 1 || samples < 1 || pilot < 0) {
            throw new IllegalArgumentException("skein needs heads and samples ≥ 1 and pilot ≥ 0, got heads=" + heads
                    + " samples=" + samples + " pilot=" + pilot);
        }
    }

    public static SkeinSpec read(ConfigReader r, LayerDefaults d) {
        int heads = r.integer("heads", d.nHead() != null ? d.nHead() : 1, 1);
        if (d.dModel() % heads != 0) {
            throw r.error("heads", "= " + heads + " does not divide d_model " + d.dModel());
        }
        int samples = r.integer("samples", DEFAULT_SAMPLES, 1);
        boolean causal = r.bool("causal", true);
        if (causal && r.has("pilot")) {
            throw r.error("pilot", "applies only with causal: false (the causal variant samples without pilot rows,"
                    + " which would need later tokens)");
        }
        int pilot = r.integer("pilot", samples, 0);
        return new SkeinSpec(heads, samples, pilot, causal, r.bool("adaptive", true));
    }

    /** The kernel's description for a head size. */
    public Skein kernel(int headDim) {
        return new Skein(heads, headDim, samples, causal ? 0 : pilot, causal, adaptive);
    }

    @Override
    public String type() {
        return TYPE;
    }

    @Override
    public TokenMixer build(LayerContext ctx) {
        return new SkeinAttention(ctx, this);
    }

    @Override
    public Map<String, Object> toMap() {
        Map<String, Object> m = ConfigReader.ordered();
        m.put("type", TYPE);
        m.put("heads", heads);
        m.put("samples", samples);
        if (!causal) {
            m.put("pilot", pilot);
        }
        m.put("causal", causal);
        m.put("adaptive", adaptive);
        return m;
    }
}
