package org.kindling.models.mixers.attention;

import java.util.Map;
import org.kindling.models.config.ConfigReader;

/**
 * How attention makes q, k and v, read from the attention spec's keys: {@code qkv} ({@code dense},
 * the default: three projections of the spec's {@code linear} kind; or {@code multiplicative}:
 * Scaling Transformers' sparse QKV) and, for multiplicative, {@code qkv_modules} (S, dividing
 * d_model; default the number of heads, as trax's {@code MultiplicativeConvCausalAttention}),
 * {@code qkv_kernel} (the odd kernel over modules of the q and k convolutions, default 3) and
 * {@code qkv_length_kernel} (the causal kernel over tokens, default 3). A dense spec writes no keys,
 * so configs and checkpoints of dense models are unchanged.
 */
public record QkvSpec(boolean multiplicative, int modules, int kernel, int lengthKernel) {
    public static final int DEFAULT_KERNEL = 3;
    public static final int DEFAULT_LENGTH_KERNEL = 3;
    public static final QkvSpec DENSE = new QkvSpec(false, 0, DEFAULT_KERNEL, DEFAULT_LENGTH_KERNEL);
    private static final String[] KEYS = {"qkv_modules", "qkv_kernel", "qkv_length_kernel"};

    static QkvSpec read(ConfigReader r, int dModel, int heads, int kvHeads, boolean denseLinear) {
        String k = r.string("qkv", "dense");
        switch (k) {
            case "dense" -> {
                for (String key : KEYS) {
                    if (r.has(key)) {
                        throw r.error(key, "applies only with qkv: multiplicative, but qkv is dense");
                    }
                }
                return DENSE;
            }
            case "multiplicative" -> {
            }
            default -> throw r.error("qkv", "is \"" + k + "\"; known: dense, multiplicative");
        }
        if (!denseLinear) {
            throw r.error("qkv", "multiplicative replaces the q, k and v projections, so it takes no structured linear;"
                    + " set linear: dense (the output projection stays dense)");
        }
        if (kvHeads != heads) {
            throw r.error("qkv", "multiplicative makes k and v as wide as q, so kv_heads (" + kvHeads
                    + ") must equal heads (" + heads + ")");
        }
        int modules = r.integer("qkv_modules", heads, 1);
        if (dModel % modules != 0) {
            throw r.error("qkv_modules", "= " + modules + " does not divide d_model " + dModel);
        }
        int kernel = r.integer("qkv_kernel", DEFAULT_KERNEL, 1);
        if (kernel % 2 == 0) {
            throw r.error("qkv_kernel", "= " + kernel + " is even; the kernel over modules is centred, so it must be odd");
        }
        int length = r.integer("qkv_length_kernel", DEFAULT_LENGTH_KERNEL, 1);
        return new QkvSpec(true, modules, kernel, length);
    }

    /** Adds this spec's keys to the attention spec's mapping (none when dense). */
    void putInto(Map<String, Object> m) {
        if (!multiplicative) {
            return;
        }
        m.put("qkv", "multiplicative");
        m.put("qkv_modules", modules);
        m.put("qkv_kernel", kernel);
        m.put("qkv_length_kernel", lengthKernel);
    }
}
