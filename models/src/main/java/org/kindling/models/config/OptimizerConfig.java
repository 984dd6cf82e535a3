package org.kindling.models.config;

import java.util.Map;

/**
 * The {@code train.optimizer} key: {@code adamw} (the default, configured by {@code beta1},
 * {@code beta2}, {@code eps}), or {@code mfac}: M-FAC (Frantar et al. 2021), steps along the
 * inverse of the damped empirical Fisher of the last {@code ngrads} gradients.
 *
 * <p>M-FAC's defaults differ from the reference code's ({@code ngrads} 1024, {@code damp} 1e-5,
 * momentum 0): its window costs ngrads × parameters fp32, so 16 gradients fit next to a model
 * where 1024 would not, and a damping of 1e-4 keeps the fp32 difference {@code g − Gᵀc}, which
 * is divided by it, clear of rounding.
 *
 * @param type {@code adamw} or {@code mfac}
 * @param ngrads M-FAC's window: the gradients its Fisher estimate is built from
 * @param damp M-FAC's damping λ of {@code F = λI + (1/m)·GᵀG}
 * @param momentum M-FAC's momentum μ on its steps: {@code v ← μv + (1 − μ)·F⁻¹g} (0 = none)
 */
public record OptimizerConfig(String type, int ngrads, double damp, double momentum) {
    public static final String ADAMW = "adamw";
    public static final String MFAC = "mfac";
    public static final int DEFAULT_NGRADS = 16;
    public static final double DEFAULT_DAMP = 1e-4;
    public static final double DEFAULT_MOMENTUM = 0;
    public static final OptimizerConfig ADAMW_DEFAULT = new OptimizerConfig(ADAMW, DEFAULT_NGRADS, DEFAULT_DAMP, DEFAULT_MOMENTUM);

    public OptimizerConfig {
        if (!ADAMW.equals(type) && !MFAC.equals(type)) {
            throw new IllegalArgumentException("optimizer must be adamw or mfac, got " + (type == null ? "none" : "'" + type + "'"));
        }
        if (ngrads < 1) {
            throw new IllegalArgumentException("optimizer.ngrads must be >= 1, got " + ngrads);
        }
        if (!(damp > 0) || !Double.isFinite(damp)) {
            throw new IllegalArgumentException("optimizer.damp must be a finite number > 0, got " + damp);
        }
        if (!(momentum >= 0 && momentum < 1)) {
            throw new IllegalArgumentException("optimizer.momentum must be in [0, 1), got " + momentum);
        }
    }

    /** M-FAC with the given window, damping and momentum. */
    public static OptimizerConfig mfac(int ngrads, double damp, double momentum) {
        return new OptimizerConfig(MFAC, ngrads, damp, momentum);
    }

    public boolean isMfac() {
        return MFAC.equals(type);
    }

    /** Reads {@code optimizer}: a type name, or a mapping with {@code type} and M-FAC's keys. */
    static OptimizerConfig read(ConfigReader train) {
        ConfigReader r = train.spec("optimizer", ADAMW);
        String type = r.string("type", ADAMW);
        if (!ADAMW.equals(type) && !MFAC.equals(type)) {
            throw r.error("type", "must be adamw or mfac, got '" + type + "'");
        }
        boolean mfac = MFAC.equals(type);
        int ngrads = DEFAULT_NGRADS;
        double damp = DEFAULT_DAMP;
        double momentum = DEFAULT_MOMENTUM;
        if (mfac) {
            ngrads = r.integer("ngrads", DEFAULT_NGRADS, 1);
            damp = r.number("damp", DEFAULT_DAMP);
            if (!(damp > 0) || !Double.isFinite(damp)) {
                throw r.error("damp", "must be a finite number > 0, got " + damp);
            }
            momentum = r.number("momentum", DEFAULT_MOMENTUM);
            if (!(momentum >= 0 && momentum < 1)) {
                throw r.error("momentum", "must be in [0, 1), got " + momentum);
            }
        }
        // AdamW has no keys here (its are beta1, beta2, eps): M-FAC's under adamw are an error, not ignored.
        r.finish();
        return new OptimizerConfig(type, ngrads, damp, momentum);
    }

    /** {@code adamw} as a name; M-FAC as a mapping with every key. */
    Object toValue() {
        if (!isMfac()) {
            return ADAMW;
        }
        Map<String, Object> m = ConfigReader.ordered();
        m.put("type", type);
        m.put("ngrads", ngrads);
        m.put("damp", damp);
        m.put("momentum", momentum);
        return m;
    }
}
