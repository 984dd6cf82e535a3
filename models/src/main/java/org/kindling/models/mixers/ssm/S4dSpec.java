package org.kindling.models.mixers.ssm;

import java.util.Map;
import org.kindling.models.config.ConfigReader;
import org.kindling.models.config.LayerDefaults;
import org.kindling.models.mixers.MixerSpec;
import org.kindling.models.mixers.TokenMixer;
import org.kindling.models.nn.LayerContext;

/**
 * S4D (Gu et al. 2022, "On the Parameterization and Initialization of Diagonal State Space
 * Models"): a diagonal state-space convolution per channel, y = out(GELU(SSM(x) + D⊙x)).
 *
 * @param dState state size N ({@code d_state}, default 64, even): N/2 complex modes per channel
 * @param init {@code lin} (S4D-Lin, Im A_n = π·n) or {@code inv} (S4D-Inv, Im A_n = (N/π)(N/(2n+1) − 1))
 * @param dtMin smallest initial step ({@code dt_min}, default 1e-3)
 * @param dtMax largest initial step ({@code dt_max}, default 1e-1): log dt ~ U[log dt_min, log dt_max)
 * @param dynamicsLr learning-rate multiplier of dt and A ({@code dynamics_lr}, default 0.1; never decayed)
 * @param block tokens per FFT block of the FlashConv kernel ({@code block}, default 1024)
 */
public record S4dSpec(int dState, String init, double dtMin, double dtMax, double dynamicsLr, int block)
        implements MixerSpec {
    public static final String TYPE = "s4d";

    public static S4dSpec read(ConfigReader r, LayerDefaults d) {
        int dState = readDState(r);
        String init = r.string("init", "lin");
        if (!init.equals("lin") && !init.equals("inv")) {
            throw r.error("init", "is \"" + init + "\"; must be lin or inv");
        }
        double dtMin = r.number("dt_min", 1e-3);
        double dtMax = r.number("dt_max", 1e-1);
        if (!(dtMin > 0 && Double.isFinite(dtMin))) {
            throw r.error("dt_min", "must be a positive number, got " + dtMin);
        }
        if (!(dtMax > dtMin && Double.isFinite(dtMax))) {
            throw r.error("dt_max", "must be a finite number above dt_min " + dtMin + ", got " + dtMax);
        }
        return new S4dSpec(dState, init, dtMin, dtMax, readDynamicsLr(r), readBlock(r));
    }

    static int readDState(ConfigReader r) {
        int dState = r.integer("d_state", 64, 2);
        if (dState % 2 != 0) {
            throw r.error("d_state", "= " + dState + " must be even: the state is d_state/2 complex conjugate pairs");
        }
        return dState;
    }

    static double readDynamicsLr(ConfigReader r) {
        double lr = r.number("dynamics_lr", 0.1);
        if (!(lr > 0 && lr <= 1e3)) {
            throw r.error("dynamics_lr", "must be in (0, 1000], got " + lr);
        }
        return lr;
    }

    static int readBlock(ConfigReader r) {
        return r.integer("block", 1024, 1);
    }

    @Override
    public String type() {
        return TYPE;
    }

    @Override
    public TokenMixer build(LayerContext ctx) {
        return new S4d(ctx, this);
    }

    @Override
    public Map<String, Object> toMap() {
        Map<String, Object> m = ConfigReader.ordered();
        m.put("type", TYPE);
        m.put("d_state", dState);
        m.put("init", init);
        m.put("dt_min", dtMin);
        m.put("dt_max", dtMax);
        m.put("dynamics_lr", dynamicsLr);
        m.put("block", block);
        return m;
    }
}
