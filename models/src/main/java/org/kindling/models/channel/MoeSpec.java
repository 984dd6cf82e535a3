package org.kindling.models.channel;

import java.util.Map;
import org.kindling.models.config.ConfigReader;
import org.kindling.models.config.LayerDefaults;
import org.kindling.models.nn.LayerContext;

/**
 * A mixture of GELU-MLP experts (Switch Transformer; MegaBlocks when dropless): a router sends each
 * token to its k most probable experts and sums their outputs weighted by those probabilities.
 *
 * @param experts E ({@code experts}, default 8)
 * @param hidden each expert's hidden width H ({@code hidden}, default {@code mlp_ratio}·C)
 * @param k experts per token ({@code k}, 1 ≤ k ≤ E, default 1)
 * @param capacityFactor {@code capacity_factor}: 0 (the default) is dropless — every token reaches its
 *     experts, computed as variable-size groups; above 0 each expert computes ⌈factor·T·k/E⌉ slots
 *     (Switch), and the entries past an expert's capacity skip it (only the residual path carries them)
 * @param balanceLoss α of Switch's load-balancing loss α·E·Σᵢ fᵢ·Pᵢ ({@code balance_loss}, default 0.01)
 * @param zLoss weight of the router z-loss, the mean squared log-sum-exp of the router logits
 *     ({@code z_loss}, default 0.001)
 * @param jitter ε of the multiplicative U(1−ε, 1+ε) noise on the router's input while training
 *     ({@code jitter}, default 0: none)
 */
public record MoeSpec(int experts, int hidden, int k, double capacityFactor, double balanceLoss, double zLoss, double jitter)
        implements ChannelSpec {
    public static final String TYPE = "moe";
    /** Metric: the load-balancing loss as added to the objective, summed over MoE layers. */
    public static final String BALANCE_LOSS = "moe_balance_loss";
    /** Metric: the router z-loss as added to the objective, summed over MoE layers. */
    public static final String Z_LOSS = "moe_z_loss";
    /** Metric: max expert load / mean load, a token-weighted mean over layers, micro-batches and workers. */
    public static final String LOAD_IMBALANCE = "moe_load_imbalance";
    /** Metric: the fraction of (token, choice) entries dropped past capacity, over the same. */
    public static final String DROPPED_FRACTION = "moe_dropped_fraction";
    static final int DEFAULT_EXPERTS = 8;

    public MoeSpec {
        if (experts < 1) {
            throw new IllegalArgumentException("moe experts must be at least 1, got " + experts);
        }
        if (hidden < 1) {
            throw new IllegalArgumentException("moe hidden must be at least 1, got " + hidden);
        }
        if (k < 1 || k > experts) {
            throw new IllegalArgumentException("moe k must be in [1, experts = " + experts + "], got " + k);
        }
        nonNegative("capacity_factor", capacityFactor);
        nonNegative("balance_loss", balanceLoss);
        nonNegative("z_loss", zLoss);
        if (!(jitter >= 0 && jitter < 1)) {
            throw new IllegalArgumentException("moe jitter must be in [0, 1), got " + jitter);
        }
    }

    private static void nonNegative(String key, double v) {
        if (!(v >= 0) || !Double.isFinite(v)) {
            throw new IllegalArgumentException("moe " + key + " must be a finite number ≥ 0, got " + v);
        }
    }

    public static MoeSpec read(ConfigReader r, LayerDefaults d) {
        int experts = r.integer("experts", DEFAULT_EXPERTS, 1);
        int hidden = r.integer("hidden", d.mlpRatio() * d.dModel(), 1);
        int k = r.integer("k", 1, 1);
        if (k > experts) {
            throw r.error("k", "= " + k + " exceeds experts = " + experts);
        }
        double jitter = nonNegative(r, "jitter", 0.0);
        if (jitter >= 1) {
            throw r.error("jitter", "= " + jitter + " must be below 1");
        }
        return new MoeSpec(experts, hidden, k, nonNegative(r, "capacity_factor", 0.0), nonNegative(r, "balance_loss", 0.01),
                nonNegative(r, "z_loss", 0.001), jitter);
    }

    private static double nonNegative(ConfigReader r, String key, double dflt) {
        double v = r.number(key, dflt);
        if (!(v >= 0) || !Double.isFinite(v)) {
            throw r.error(key, "must be a finite number ≥ 0, got " + v);
        }
        return v;
    }

    /** Whether every token reaches its experts (no capacity). */
    public boolean dropless() {
        return capacityFactor == 0;
    }

    @Override
    public String type() {
        return TYPE;
    }

    @Override
    public ChannelMixer build(LayerContext ctx) {
        return new Moe(ctx, this);
    }

    /** The E − k experts a token does not visit: 2·H·C weights each. */
    @Override
    public long inactiveParameters(int dModel) {
        return (long) (experts - k) * 2 * hidden * dModel;
    }

    @Override
    public String notRecomputable() {
        return "its router sums routing counts over the workers and reports balance metrics in the forward, which a recompute would repeat";
    }

    @Override
    public Map<String, Object> toMap() {
        Map<String, Object> m = ConfigReader.ordered();
        m.put("type", TYPE);
        m.put("experts", experts);
        m.put("hidden", hidden);
        m.put("k", k);
        m.put("capacity_factor", capacityFactor);
        m.put("balance_loss", balanceLoss);
        m.put("z_loss", zLoss);
        m.put("jitter", jitter);
        return m;
    }
}
