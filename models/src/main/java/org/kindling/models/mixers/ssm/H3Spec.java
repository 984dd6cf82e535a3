package org.kindling.models.mixers.ssm;

import java.util.Map;
import org.kindling.models.config.ConfigReader;
import org.kindling.models.config.LayerDefaults;
import org.kindling.models.mixers.MixerSpec;
import org.kindling.models.mixers.TokenMixer;
import org.kindling.models.nn.LayerContext;

/**
 * H3 (Dao, Fu et al. 2023, "Hungry Hungry Hippos"): a shift SSM on the keys, their outer product
 * with the values per head, a diagonal SSM over it and a readout by the queries.
 *
 * @param dState state size of both SSMs ({@code d_state}, default 64, even): the shift SSM's taps,
 *               and d_state/2 complex modes per channel of the diagonal one
 * @param heads NH ({@code heads}, default d_model: head dim HS = C/NH = 1, the paper's default and
 *              the elementwise K⊙V gate; the diagonal SSM runs over NH·HS·HS = C·HS channels)
 * @param dynamicsLr learning-rate multiplier of the diagonal SSM's dt and A ({@code dynamics_lr}, default 0.1; never decayed)
 * @param block tokens per FFT block of the FlashConv kernel ({@code block}, default 1024)
 */
public record H3Spec(int dState, int heads, double dynamicsLr, int block) implements MixerSpec {
    public static final String TYPE = "h3";
    /** The diagonal SSM's initial step range, S4D's defaults (H3 keeps them). */
    static final double DT_MIN = 1e-3;
    static final double DT_MAX = 1e-1;

    public static H3Spec read(ConfigReader r, LayerDefaults d) {
        int dState = S4dSpec.readDState(r);
        int heads = r.integer("heads", d.dModel(), 1);
        if (d.dModel() % heads != 0) {
            throw r.error("heads", "= " + heads + " does not divide d_model " + d.dModel());
        }
        return new H3Spec(dState, heads, S4dSpec.readDynamicsLr(r), S4dSpec.readBlock(r));
    }

    @Override
    public String type() {
        return TYPE;
    }

    @Override
    public TokenMixer build(LayerContext ctx) {
        return new H3(ctx, this);
    }

    @Override
    public Map<String, Object> toMap() {
        Map<String, Object> m = ConfigReader.ordered();
        m.put("type", TYPE);
        m.put("d_state", dState);
        m.put("heads", heads);
        m.put("dynamics_lr", dynamicsLr);
        m.put("block", block);
        return m;
    }
}
