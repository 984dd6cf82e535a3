package org.kindling.models.mixers.linear;

import java.util.Arrays;
import java.util.Map;
import java.util.Optional;
import java.util.stream.Collectors;
import org.kindling.models.config.ConfigReader;
import org.kindling.models.config.LayerDefaults;
import org.kindling.models.mixers.MixerSpec;
import org.kindling.models.mixers.TokenMixer;
import org.kindling.models.nn.LayerContext;

/**
 * Learned-kernel attention (KL-Transformer, Chowdhury et al. 2021, "Learning the Transformer
 * Kernel"): linear attention whose features are random Fourier features of a spectral distribution
 * — fixed N(0, I), or learned as a Gaussian mixture, a FastFood product or a generator network —
 * in their trigonometric (RKS) or positive (PRF) form. See {@link SpectralFeatures}.
 *
 * @param heads heads NH ({@code heads}, default {@code n_head}, else 1); HS = C / NH
 * @param kernel the feature map ({@code kernel}: {@code gmm-rks}, {@code gmm-prf}, {@code rks}, {@code prf},
 *               {@code fastfood-rks}, {@code fastfood-prf}, {@code generator-rks}, {@code generator-prf}; default gmm-rks)
 * @param features random frequencies M (per mixture component for the gmm kernels) ({@code features}, default max(16, round(HS·ln HS)))
 * @param components mixture components ({@code components}, gmm kernels only, default 2; 1 for the others)
 * @param eps added to the normaliser ({@code eps}, default 1e-6)
 */
public record KernelizedSpec(int heads, Kernel kernel, int features, int components, double eps) implements MixerSpec {
    public static final String TYPE = "kernelized";
    static final int DEFAULT_COMPONENTS = 2;

    /** How a kernel's frequencies are made: fixed noise, or a learned Gaussian mixture, FastFood product or generator of it. */
    enum Family {
        FIXED, GMM, FASTFOOD, GENERATOR
    }

    /** The feature maps: how the spectral distribution is made, and whether the features are positive. */
    public enum Kernel {
        GMM_RKS("gmm-rks", Family.GMM, false),
        GMM_PRF("gmm-prf", Family.GMM, true),
        RKS("rks", Family.FIXED, false),
        PRF("prf", Family.FIXED, true),
        FASTFOOD_RKS("fastfood-rks", Family.FASTFOOD, false),
        FASTFOOD_PRF("fastfood-prf", Family.FASTFOOD, true),
        GENERATOR_RKS("generator-rks", Family.GENERATOR, false),
        GENERATOR_PRF("generator-prf", Family.GENERATOR, true);

        private final String key;
        final Family family;
        /** Learns a mixture of components (the gmm kernels): the only ones with {@code components}. */
        final boolean mixture;
        /** Trains the spectral distribution at all (every kernel but rks and prf). */
        final boolean learned;
        final boolean positive;

        Kernel(String key, Family family, boolean positive) {
            this.key = key;
            this.family = family;
            this.mixture = family == Family.GMM;
            this.learned = family != Family.FIXED;
            this.positive = positive;
        }

        public String key() {
            return key;
        }

        /** The kernel named {@code key}, if there is one. */
        public static Optional<Kernel> find(String key) {
            return Arrays.stream(values()).filter(k -> k.key.equals(key)).findFirst();
        }

        public static String keys() {
            return Arrays.stream(values()).map(Kernel::key).collect(Collectors.joining(", "));
        }
    }

    public KernelizedSpec {
        LinearAttentionSpec.checkScalars(heads, eps);
        if (kernel == null) {
            throw new IllegalArgumentException("kernelized attention needs a kernel (" + Kernel.keys() + ")");
        }
        if (features < 1) {
            throw new IllegalArgumentException("kernelized attention features must be at least 1, got " + features);
        }
        if (components < 1 || (!kernel.mixture && components != 1)) {
            throw new IllegalArgumentException("kernelized attention components must be at least 1 (exactly 1 for "
                    + kernel.key + ", which learns no mixture), got " + components);
        }
    }

    public static KernelizedSpec read(ConfigReader r, LayerDefaults d) {
        int heads = LinearAttentionSpec.heads(r, d);
        String key = r.string("kernel", Kernel.GMM_RKS.key);
        Kernel kernel = Kernel.find(key).orElseThrow(() -> r.error("kernel", "is \"" + key + "\"; known kernels: " + Kernel.keys()));
        int features = r.integer("features", PerformerSpec.defaultFeatures(d.dModel() / heads), 1);
        int components;
        if (kernel.mixture) {
            components = r.integer("components", DEFAULT_COMPONENTS, 1);
        } else {
            if (r.has("components")) {
                throw r.error("components", "applies to the gmm kernels only; kernel " + kernel.key
                        + " has no mixture");
            }
            components = 1;
        }
        return new KernelizedSpec(heads, kernel, features, components, LinearAttentionSpec.eps(r));
    }

    @Override
    public String type() {
        return TYPE;
    }

    @Override
    public TokenMixer build(LayerContext ctx) {
        int hs = ctx.dModel() / heads;
        return new KernelAttention(ctx, heads, new SpectralFeatures(ctx, heads, hs, kernel, features, components), eps);
    }

    @Override
    public Map<String, Object> toMap() {
        Map<String, Object> m = ConfigReader.ordered();
        m.put("type", TYPE);
        m.put("heads", heads);
        m.put("kernel", kernel.key);
        m.put("features", features);
        if (kernel.mixture) {
            m.put("components", components);
        }
        m.put("eps", eps);
        return m;
    }
}
