package org.kindling.models.mixers.attention;

import java.util.Map;
import org.kindling.models.config.ConfigReader;
import org.kindling.models.config.LayerDefaults;
import org.kindling.models.mixers.MixerSpec;
import org.kindling.models.mixers.TokenMixer;
import org.kindling.models.nn.LayerContext;
import org.kindling.models.nn.LinearSpec;
import org.kindling.ops.Attention;

/**
 * Causal multi-head softmax attention (FlashAttention).
 *
 * @param heads query heads NH ({@code heads}, default {@code n_head}); HS = C / NH
 * @param kvHeads key/value heads NKV ({@code kv_heads}, default {@code n_kv_head}, else NH): grouped-query attention below NH
 * @param linear the q, k, v and output projections' kind ({@code linear} and its {@code pixelfly_*} keys, see {@link LinearSpec})
 * @param qkv how q, k and v are made ({@code qkv} and its {@code qkv_*} keys, see {@link QkvSpec})
 */
public record AttentionSpec(int heads, int kvHeads, LinearSpec linear, QkvSpec qkv) implements MixerSpec {
    public static final String TYPE = "attention";

    public static AttentionSpec read(ConfigReader r, LayerDefaults d) {
        if (!r.has("heads") && d.nHead() == null) {
            throw r.error("heads", "is required (or set n_head for every attention layer)");
        }
        int heads = r.integer("heads", d.nHead(), 1);
        int kv = r.integer("kv_heads", d.nKvHead() != null ? d.nKvHead() : heads, 1);
        if (d.dModel() % heads != 0) {
            throw r.error("heads", "= " + heads + " does not divide d_model " + d.dModel());
        }
        if (heads % kv != 0) {
            throw r.error("kv_heads", "= " + kv + " does not divide heads " + heads);
        }
        if (d.dModel() / heads > Attention.MAX_HEAD_DIM) {
            throw r.error("heads", "= " + heads + " gives head dim " + d.dModel() / heads + ", above the kernel's "
                    + Attention.MAX_HEAD_DIM);
        }
        LinearSpec linear = LinearSpec.read(r);
        return new AttentionSpec(heads, kv, linear, QkvSpec.read(r, d.dModel(), heads, kv, linear.dense()));
    }

    /** Dense q, k, v made by {@code linear} projections. */
    public AttentionSpec(int heads, int kvHeads, LinearSpec linear) {
        this(heads, kvHeads, linear, QkvSpec.DENSE);
    }

    /** Dense q, k, v and output projections. */
    public AttentionSpec(int heads, int kvHeads) {
        this(heads, kvHeads, LinearSpec.DENSE, QkvSpec.DENSE);
    }

    @Override
    public String type() {
        return TYPE;
    }

    /** GPT-2's name, so checkpoints and the Hugging Face export keep their tensor names. */
    @Override
    public String paramPrefix() {
        return "attn";
    }

    @Override
    public TokenMixer build(LayerContext ctx) {
        return new CausalSelfAttention(ctx, this);
    }

    @Override
    public Map<String, Object> toMap() {
        Map<String, Object> m = ConfigReader.ordered();
        m.put("type", TYPE);
        m.put("heads", heads);
        m.put("kv_heads", kvHeads);
        linear.putInto(m);
        qkv.putInto(m);
        return m;
    }
}
