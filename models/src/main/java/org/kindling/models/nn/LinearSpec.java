package org.kindling.models.nn;

import java.util.Map;
import org.kindling.models.config.ConfigReader;
import org.kindling.ops.Device;

/**
 * Which linear a layer's projections are, read from the layer spec's keys: {@code linear}
 * ({@code dense}, {@code pixelfly} or {@code butterfly}, default dense) and, for pixelfly,
 * {@code pixelfly_block}, {@code pixelfly_butterfly_size}, {@code pixelfly_factors},
 * {@code pixelfly_rank} and {@code pixelfly_gate} (defaults: the paper's MLP setting, block 32,
 * butterfly size 16, 2 factors, rank 32, no gate); for butterfly, {@code butterfly_terms}, the
 * butterfly matrices summed (default 1). A dense spec writes no keys, so configs and checkpoints of
 * dense models are unchanged.
 */
public record LinearSpec(Kind kind, int block, int butterflySize, int factors, int rank, boolean gate, int terms) {
    public enum Kind {
        DENSE, PIXELFLY, BUTTERFLY;

        public String key() {
            return name().toLowerCase();
        }
    }

    public static final LinearSpec DENSE = new LinearSpec(Kind.DENSE, PixelflyLinear.REFERENCE_BLOCK,
            PixelflyLinear.REFERENCE_BUTTERFLY_SIZE, PixelflyLinear.REFERENCE_FACTORS, PixelflyLinear.REFERENCE_RANK, false);

    /** One butterfly term. */
    public LinearSpec(Kind kind, int block, int butterflySize, int factors, int rank, boolean gate) {
        this(kind, block, butterflySize, factors, rank, gate, 1);
    }

    /** The most butterfly matrices one projection sums (each is as slow as one butterfly). */
    public static final int MAX_TERMS = 64;

    public static LinearSpec read(ConfigReader r) {
        String k = r.string("linear", Kind.DENSE.key());
        Kind kind = switch (k) {
            case "dense" -> Kind.DENSE;
            case "pixelfly" -> Kind.PIXELFLY;
            case "butterfly" -> Kind.BUTTERFLY;
            default -> throw r.error("linear", "is \"" + k + "\"; known: dense, pixelfly, butterfly");
        };
        if (kind != Kind.PIXELFLY) {
            for (String key : new String[] {"pixelfly_block", "pixelfly_butterfly_size", "pixelfly_factors", "pixelfly_rank", "pixelfly_gate"}) {
                if (r.has(key)) {
                    throw r.error(key, "applies only with linear: pixelfly, but linear is " + k);
                }
            }
            if (kind == Kind.DENSE) {
                if (r.has("butterfly_terms")) {
                    throw r.error("butterfly_terms", "applies only with linear: butterfly, but linear is " + k);
                }
                return DENSE;
            }
            return new LinearSpec(kind, DENSE.block, DENSE.butterflySize, DENSE.factors, DENSE.rank, false,
                    terms(r));
        }
        if (r.has("butterfly_terms")) {
            throw r.error("butterfly_terms", "applies only with linear: butterfly, but linear is " + k);
        }
        int block = r.integer("pixelfly_block", DENSE.block, 1);
        int size = r.integer("pixelfly_butterfly_size", DENSE.butterflySize, 1);
        if (Integer.bitCount(size) != 1) {
            throw r.error("pixelfly_butterfly_size", "is " + size + ", not a power of two");
        }
        int factors = r.integer("pixelfly_factors", DENSE.factors, 0);
        if (factors > Integer.numberOfTrailingZeros(size)) {
            throw r.error("pixelfly_factors", "is " + factors + ", more than log2(pixelfly_butterfly_size " + size + ")");
        }
        int rank = r.integer("pixelfly_rank", DENSE.rank, 0);
        return new LinearSpec(kind, block, size, factors, rank, r.bool("pixelfly_gate", false));
    }

    /** Butterfly terms: each adds the twiddles of a whole butterfly, so a count beyond any sensible width is refused here. */
    private static int terms(ConfigReader r) {
        int terms = r.integer("butterfly_terms", 1, 1);
        if (terms > MAX_TERMS) {
            throw r.error("butterfly_terms", "is " + terms + "; at most " + MAX_TERMS + " butterfly matrices are summed");
        }
        return terms;
    }

    public boolean dense() {
        return kind == Kind.DENSE;
    }

    /** Adds this spec's keys to a layer spec's mapping (none when dense). */
    public void putInto(Map<String, Object> m) {
        if (kind == Kind.DENSE) {
            return;
        }
        m.put("linear", kind.key());
        if (kind == Kind.PIXELFLY) {
            m.put("pixelfly_block", block);
            m.put("pixelfly_butterfly_size", butterflySize);
            m.put("pixelfly_factors", factors);
            m.put("pixelfly_rank", rank);
            m.put("pixelfly_gate", gate);
        }
        if (kind == Kind.BUTTERFLY) {
            m.put("butterfly_terms", terms);
        }
    }

    /** A projection IC → OC whose initialisation keeps the output variance of a dense N(0, std²) layer. */
    public Projection build(Params.Builder pb, Device dev, String name, int in, int out, boolean bias, double std) {
        return switch (kind) {
            case BUTTERFLY -> new ButterflyLinear(pb, dev, name, in, out, bias, std, terms);
            case PIXELFLY -> PixelflyLinear.flatButterfly(pb, dev, name, in, out, bias, block, butterflySize, factors,
                    Math.min(rank, Math.min(in, out)), gate, std);
            case DENSE -> Projection.dense(new Linear(pb, name, in, out, bias, std));
        };
    }
}
