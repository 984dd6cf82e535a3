package org.kindling.models.channel;

import java.util.Map;
import org.kindling.models.config.ConfigReader;
import org.kindling.models.config.LayerDefaults;
import org.kindling.models.nn.LayerContext;

/**
 * Scaling Transformers' sparse FFN ("Sparse is Enough in Scaling Transformers", Jaszczur et al.
 * 2021): a ReLU FFN whose d_ff hidden units form blocks of N, of which a low-rank controller lets
 * exactly one per block through, so decoding reads d_ff/N rows of each weight.
 *
 * @param dFf hidden width ({@code d_ff}, default {@code mlp_ratio}·C, as the MLP's)
 * @param block N, units per block ({@code block}, default 32 as in trax; must divide d_ff)
 * @param controllerRank the controller's low rank ({@code controller_rank}, default 64)
 * @param temperature τ, the scale of the Gumbel noise added to the logits before a quantised training
 *     pass's argmax ({@code temperature}, default 0.1, trax's)
 * @param quantize the share of training passes whose forward uses the hard one-hot
 *     ({@code quantize}, in [0, 1]; default 0.3, trax's {@code quant_prob} of {@code SparseFF})
 */
public record SparseFfnSpec(int dFf, int block, int controllerRank, double temperature, double quantize) implements ChannelSpec {
    public static final String TYPE = "sparse_ffn";
    static final int DEFAULT_BLOCK = 32;
    static final int DEFAULT_RANK = 64;
    static final double DEFAULT_TEMPERATURE = 0.1;
    static final double DEFAULT_QUANTIZE = 0.3;

    public SparseFfnSpec {
        String why = problem(dFf, block, controllerRank, temperature, quantize);
        if (why != null) {
            throw new IllegalArgumentException("sparse_ffn " + why);
        }
    }

    /** Every rule of the spec in one place: what is wrong, starting with the key, or null. */
    private static String problem(int dFf, int block, int rank, double temperature, double quantize) {
        if (dFf < 1) {
            return "d_ff must be at least 1, got " + dFf;
        }
        if (block < 1) {
            return "block must be at least 1, got " + block;
        }
        if (dFf % block != 0) {
            return "block = " + block + " must divide d_ff = " + dFf;
        }
        if (rank < 1) {
            return "controller_rank must be at least 1, got " + rank;
        }
        if (!(temperature > 0) || !Double.isFinite(temperature)) {
            return "temperature must be a finite number > 0, got " + temperature;
        }
        if (!(quantize >= 0 && quantize <= 1)) {
            return "quantize must be in [0, 1], got " + quantize;
        }
        return null;
    }

    public static SparseFfnSpec read(ConfigReader r, LayerDefaults d) {
        int dFf = r.integer("d_ff", d.mlpRatio() * d.dModel(), 1);
        int block = r.integer("block", DEFAULT_BLOCK, 1);
        int rank = r.integer("controller_rank", DEFAULT_RANK, 1);
        double temperature = r.number("temperature", DEFAULT_TEMPERATURE);
        double quantize = r.number("quantize", DEFAULT_QUANTIZE);
        String why = problem(dFf, block, rank, temperature, quantize);
        if (why != null) {
            int space = why.indexOf(' ');
            throw r.error(why.substring(0, space), why.substring(space + 1));
        }
        return new SparseFfnSpec(dFf, block, rank, temperature, quantize);
    }

    /** The defaults for a hidden width. */
    public SparseFfnSpec(int dFf) {
        this(dFf, DEFAULT_BLOCK, DEFAULT_RANK, DEFAULT_TEMPERATURE, DEFAULT_QUANTIZE);
    }

    /** Blocks B = d_ff / N: the hidden units one token uses. */
    public int blocks() {
        return dFf / block;
    }

    @Override
    public String type() {
        return TYPE;
    }

    @Override
    public ChannelMixer build(LayerContext ctx) {
        return new SparseFfn(ctx, this);
    }

    /** The N − 1 units per block a token does not use: a row of W1, its bias and a row of W2 each. */
    @Override
    public long inactiveParameters(int dModel) {
        return (long) (dFf - blocks()) * (2L * dModel + 1);
    }

    @Override
    public Map<String, Object> toMap() {
        Map<String, Object> m = ConfigReader.ordered();
        m.put("type", TYPE);
        m.put("d_ff", dFf);
        m.put("block", block);
        m.put("controller_rank", controllerRank);
        m.put("temperature", temperature);
        m.put("quantize", quantize);
        return m;
    }
}
