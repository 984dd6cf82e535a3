package org.kindling.models.mixers.attention;

import java.util.Map;
import org.kindling.models.config.ConfigReader;
import org.kindling.models.config.LayerDefaults;
import org.kindling.models.mixers.MixerSpec;
import org.kindling.models.mixers.TokenMixer;
import org.kindling.models.nn.LayerContext;
import org.kindling.models.nn.LinearSpec;
import org.kindling.ops.Attention;
import org.kindling.ops.BlockMask;

/**
 * Causal multi-head softmax attention (FlashAttention).
 *
 * @param heads query heads NH ({@code heads}, default {@code n_head}); HS = C / NH
 * @param kvHeads key/value heads NKV ({@code kv_heads}, default {@code n_kv_head}, else NH): grouped-query attention below NH
 * @param linear the q, k, v and output projections' kind ({@code linear} and its {@code pixelfly_*} keys, see {@link LinearSpec})
 * @param mask which (query block, key block) pairs attention computes ({@code mask}: {@code dense}, the default, or
 *     {@code flat_butterfly}: Pixelated Butterfly's flat block butterfly over the model's {@code max_seq}, see
 *     {@link BlockMask#flatButterfly}); causal masking applies on top
 * @param maskBlock the mask's block edge in tokens ({@code mask_block}, a multiple of the kernels' tile
 *     {@link BlockMask#GRANULE}, default that tile)
 * @param maskButterflySize the butterfly size ({@code mask_butterfly_size}, a power of two, default
 *     {@link #DEFAULT_MASK_BUTTERFLY_SIZE}): query block i attends key block j when i XOR j is 0 or a power of two below it
 * @param qkv how q, k and v are made ({@code qkv} and its {@code qkv_*} keys, see {@link QkvSpec})
 */
public record AttentionSpec(int heads, int kvHeads, LinearSpec linear, Mask mask, int maskBlock, int maskButterflySize,
        QkvSpec qkv) implements MixerSpec {
    public static final String TYPE = "attention";
    /** Each query block attends itself and log2(8) = 3 partner blocks (those a causal mask leaves of them). */
    public static final int DEFAULT_MASK_BUTTERFLY_SIZE = 8;

    public enum Mask {
        DENSE, FLAT_BUTTERFLY;

        public String key() {
            return name().toLowerCase();
        }
    }

    public AttentionSpec {
        if (mask == Mask.FLAT_BUTTERFLY && (maskBlock < BlockMask.GRANULE || maskBlock % BlockMask.GRANULE != 0
                || Integer.bitCount(maskButterflySize) != 1 || maskButterflySize < 1)) {
            throw new IllegalArgumentException("flat_butterfly mask needs mask_block a multiple of " + BlockMask.GRANULE
                    + " and mask_butterfly_size a power of two, got " + maskBlock + " and " + maskButterflySize);
        }
    }

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
        QkvSpec qkv = QkvSpec.read(r, d.dModel(), heads, kv, linear.dense());
        String m = r.string("mask", Mask.DENSE.key());
        Mask mask = switch (m) {
            case "dense" -> Mask.DENSE;
            case "flat_butterfly" -> Mask.FLAT_BUTTERFLY;
            default -> throw r.error("mask", "is \"" + m + "\"; known: dense, flat_butterfly");
        };
        if (mask == Mask.DENSE) {
            for (String key : new String[] {"mask_block", "mask_butterfly_size"}) {
                if (r.has(key)) {
                    throw r.error(key, "applies only with mask: flat_butterfly, but mask is " + m);
                }
            }
            return new AttentionSpec(heads, kv, linear, Mask.DENSE, BlockMask.GRANULE, DEFAULT_MASK_BUTTERFLY_SIZE, qkv);
        }
        if (d.maxSeq() < 1) {
            throw r.error("mask", "flat_butterfly is laid out over the model's max_seq, which this model does not set"
                    + " (set max_seq, or use pos_emb: learned)");
        }
        int block = r.integer("mask_block", BlockMask.GRANULE, 1);
        if (block % BlockMask.GRANULE != 0) {
            throw r.error("mask_block", "is " + block + ", not a multiple of the attention kernels' tile " + BlockMask.GRANULE);
        }
        int size = r.integer("mask_butterfly_size", DEFAULT_MASK_BUTTERFLY_SIZE, 1);
        if (Integer.bitCount(size) != 1) {
            throw r.error("mask_butterfly_size", "is " + size + ", not a power of two");
        }
        return new AttentionSpec(heads, kv, linear, mask, block, size, qkv);
    }

    /** Dense q, k, v and output projections. */
    public AttentionSpec(int heads, int kvHeads) {
        this(heads, kvHeads, LinearSpec.DENSE);
    }

    /** Dense attention (no block mask), q, k, v made by {@code linear} projections. */
    public AttentionSpec(int heads, int kvHeads, LinearSpec linear) {
        this(heads, kvHeads, linear, Mask.DENSE, BlockMask.GRANULE, DEFAULT_MASK_BUTTERFLY_SIZE, QkvSpec.DENSE);
    }

    /** A block mask, q, k, v made by {@code linear} projections. */
    public AttentionSpec(int heads, int kvHeads, LinearSpec linear, Mask mask, int maskBlock, int maskButterflySize) {
        this(heads, kvHeads, linear, mask, maskBlock, maskButterflySize, QkvSpec.DENSE);
    }

    /** No block mask, q, k, v as {@code qkv} says. */
    public AttentionSpec(int heads, int kvHeads, LinearSpec linear, QkvSpec qkv) {
        this(heads, kvHeads, linear, Mask.DENSE, BlockMask.GRANULE, DEFAULT_MASK_BUTTERFLY_SIZE, qkv);
    }

    /** The block mask over sequences up to {@code maxSeq} tokens, or null for dense attention. */
    public BlockMask blockMask(int maxSeq) {
        if (mask == Mask.DENSE) {
            return null;
        }
        if (maxSeq < 1) {
            throw new IllegalArgumentException("attention mask " + mask.key() + " needs the model's max_seq, but it has none");
        }
        return BlockMask.flatButterfly(maxSeq, maskBlock, maskButterflySize);
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
        if (mask != Mask.DENSE) {
            m.put("mask", mask.key());
            m.put("mask_block", maskBlock);
            m.put("mask_butterfly_size", maskButterflySize);
        }
        qkv.putInto(m);
        return m;
    }
}
