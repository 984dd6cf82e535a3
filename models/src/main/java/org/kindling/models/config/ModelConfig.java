package org.kindling.models.config;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Map;
import org.kindling.models.channel.ChannelMixers;
import org.kindling.models.channel.ChannelSpec;
import org.kindling.models.channel.MlpSpec;
import org.kindling.models.channel.MoeSpec;
import org.kindling.models.mixers.MixerSpec;
import org.kindling.models.mixers.Mixers;
import org.kindling.models.mixers.attention.AttentionSpec;

/**
 * A decoder-only language model, as written in {@code conf/models/*.yaml}. Token and channel
 * mixers are typed specs per layer ({@code mixer: {type: h3, d_state: 64}}, or a list with one per
 * layer), so hybrids are one config away; see {@link Mixers} and {@link ChannelMixers}.
 *
 * @param vocab tokens V
 * @param dModel channels C
 * @param nLayer blocks
 * @param nHead {@code n_head}, the default heads of attention layers (0 when unset)
 * @param nKvHead {@code n_kv_head}, the default key/value heads of attention layers (0 when unset)
 * @param maxSeq the longest sequence the model accepts; 0 for no limit (only without a learned position embedding)
 * @param posEmb the position embedding
 * @param mixers token mixer per layer
 * @param channelMixers channel mixer per layer
 * @param mlpRatio {@code mlp_ratio}, the default hidden width of MLPs as a multiple of C
 * @param dropout dropout probability after the embeddings and on each residual branch, while training (0 = off)
 * @param initStd standard deviation of weight init; residual projections use initStd/√(2·nLayer)
 * @param layerNormEps LayerNorm epsilon
 * @param deq {@code deq}: the one block is solved to its fixed point (a deep equilibrium model); null for a stack of blocks
 */
public record ModelConfig(int vocab, int dModel, int nLayer, int nHead, int nKvHead, int maxSeq, PosEmb posEmb,
                          List<MixerSpec> mixers, List<ChannelSpec> channelMixers, int mlpRatio, double dropout, double initStd,
                          double layerNormEps, DeqConfig deq) {

    /** How tokens learn where they are. */
    public enum PosEmb {
        /** GPT-2's table of max_seq learned vectors, added to the token embedding. */
        LEARNED,
        /** None: the token mixers carry order themselves (state-space layers, causal convolutions). */
        NONE;

        String key() {
            return name().toLowerCase();
        }
    }

    public ModelConfig {
        mixers = List.copyOf(mixers);
        channelMixers = List.copyOf(channelMixers);
        positive("vocab", vocab);
        positive("d_model", dModel);
        positive("n_layer", nLayer);
        positive("mlp_ratio", mlpRatio);
        if (nHead < 0 || nKvHead < 0) {
            throw new IllegalArgumentException("n_head and n_kv_head must be at least 1 when set, got " + nHead + " and " + nKvHead);
        }
        if (posEmb == PosEmb.LEARNED && maxSeq < 1) {
            throw new IllegalArgumentException("max_seq must be at least 1 with pos_emb learned, got " + maxSeq);
        }
        if (maxSeq < 0) {
            throw new IllegalArgumentException("max_seq must be at least 1, got " + maxSeq);
        }
        if (mixers.size() != nLayer) {
            throw new IllegalArgumentException("mixer lists " + mixers.size() + " layers but n_layer is " + nLayer);
        }
        if (channelMixers.size() != nLayer) {
            throw new IllegalArgumentException("channel_mixer lists " + channelMixers.size() + " layers but n_layer is " + nLayer);
        }
        if (!(dropout >= 0 && dropout < 1)) {
            throw new IllegalArgumentException("dropout must be in [0, 1), got " + dropout);
        }
        if (!(initStd > 0)) {
            throw new IllegalArgumentException("init_std must be > 0, got " + initStd);
        }
        if (!(layerNormEps > 0)) {
            throw new IllegalArgumentException("layer_norm_eps must be > 0, got " + layerNormEps);
        }
        if (deq != null && nLayer != 1) {
            throw new IllegalArgumentException("deq needs n_layer: 1 (its one weight-tied block is applied until it reaches its "
                    + "fixed point; depth comes from deq.max_iter), got n_layer " + nLayer);
        }
        if (deq != null && channelMixers.get(0) instanceof MoeSpec) {
            throw new IllegalArgumentException("deq does not take channel_mixer moe: its router sums statistics over the workers "
                    + "in every forward pass, and the solver's number of passes differs between workers");
        }
    }

    /** A model without deq. */
    public ModelConfig(int vocab, int dModel, int nLayer, int nHead, int nKvHead, int maxSeq, PosEmb posEmb, List<MixerSpec> mixers,
                       List<ChannelSpec> channelMixers, int mlpRatio, double dropout, double initStd, double layerNormEps) {
        this(vocab, dModel, nLayer, nHead, nKvHead, maxSeq, posEmb, mixers, channelMixers, mlpRatio, dropout, initStd, layerNormEps,
                null);
    }

    /**
     * A GPT-2-shaped model: attention (NH query, NKV key/value heads) and an MLP in every layer,
     * learned positions, dropout, init and LayerNorm as given.
     */
    public static ModelConfig gpt(int vocab, int dModel, int nLayer, int nHead, int nKvHead, int maxSeq, int mlpRatio, double dropout,
                                  double initStd, double layerNormEps) {
        return new ModelConfig(vocab, dModel, nLayer, nHead, nKvHead, maxSeq, PosEmb.LEARNED,
                Collections.nCopies(nLayer, new AttentionSpec(nHead, nKvHead)), Collections.nCopies(nLayer, new MlpSpec(mlpRatio)),
                mlpRatio, dropout, initStd, layerNormEps);
    }

    /** This config with other token mixers (one per layer). */
    public ModelConfig withMixers(List<MixerSpec> specs) {
        return new ModelConfig(vocab, dModel, nLayer, nHead, nKvHead, maxSeq, posEmb, specs, channelMixers, mlpRatio, dropout, initStd,
                layerNormEps, deq);
    }

    /** This config with other channel mixers (one per layer). */
    public ModelConfig withChannelMixers(List<ChannelSpec> specs) {
        return new ModelConfig(vocab, dModel, nLayer, nHead, nKvHead, maxSeq, posEmb, mixers, specs, mlpRatio, dropout, initStd,
                layerNormEps, deq);
    }

    /** This config with another position embedding and sequence limit (0 = none). */
    public ModelConfig withPositions(PosEmb emb, int limit) {
        return new ModelConfig(vocab, dModel, nLayer, nHead, nKvHead, limit, emb, mixers, channelMixers, mlpRatio, dropout, initStd,
                layerNormEps, deq);
    }

    /** This config with another dropout probability. */
    public ModelConfig withDropout(double p) {
        return new ModelConfig(vocab, dModel, nLayer, nHead, nKvHead, maxSeq, posEmb, mixers, channelMixers, mlpRatio, p, initStd,
                layerNormEps, deq);
    }

    /** This config as a deep equilibrium model (null: a stack of blocks again). */
    public ModelConfig withDeq(DeqConfig d) {
        return new ModelConfig(vocab, dModel, nLayer, nHead, nKvHead, maxSeq, posEmb, mixers, channelMixers, mlpRatio, dropout, initStd,
                layerNormEps, d);
    }

    private static void positive(String key, int v) {
        if (v < 1) {
            throw new IllegalArgumentException(key + " must be at least 1, got " + v);
        }
    }

    /** Whether sequences are limited: a learned position table, or a max_seq set by hand. */
    public boolean limited() {
        return maxSeq > 0;
    }

    /** Reads the model keys of a config mapping (the {@code train} section is read by {@link TrainConfig}). */
    static ModelConfig read(ConfigReader r) {
        int vocab = r.integer("vocab", null, 1);
        int dModel = r.integer("d_model", null, 1);
        int nLayer = r.integer("n_layer", null, 1);
        Integer nHead = r.has("n_head") ? r.integer("n_head", null, 1) : null;
        Integer nKvHead = r.has("n_kv_head") ? r.integer("n_kv_head", null, 1) : nHead;
        String pos = r.string("pos_emb", PosEmb.LEARNED.key());
        PosEmb posEmb = switch (pos) {
            case "learned" -> PosEmb.LEARNED;
            case "none" -> PosEmb.NONE;
            default -> throw r.error("pos_emb", "is \"" + pos + "\"; known: learned, none");
        };
        int maxSeq = posEmb == PosEmb.LEARNED || r.has("max_seq") ? r.integer("max_seq", null, 1) : 0;
        int mlpRatio = r.integer("mlp_ratio", 4, 1);
        LayerDefaults defaults = new LayerDefaults(dModel, nHead, nKvHead, mlpRatio, maxSeq);
        List<MixerSpec> mixers = specs(r.perLayer("mixer", AttentionSpec.TYPE, nLayer), c -> Mixers.read(c, defaults));
        List<ChannelSpec> channels = specs(r.perLayer("channel_mixer", MlpSpec.TYPE, nLayer), c -> ChannelMixers.read(c, defaults));
        double dropout = r.number("dropout", 0.0);
        double initStd = r.number("init_std", 0.02);
        double eps = r.number("layer_norm_eps", 1e-5);
        ConfigReader deqReader = r.child("deq");
        DeqConfig deq = deqReader == null ? null : DeqConfig.read(deqReader);
        try {
            return new ModelConfig(vocab, dModel, nLayer, nHead == null ? 0 : nHead, nKvHead == null ? 0 : nKvHead, maxSeq, posEmb,
                    mixers, channels, mlpRatio, dropout, initStd, eps, deq);
        } catch (IllegalArgumentException e) {
            throw r.invalid(e);
        }
    }

    /** Reads each distinct reader once: a single spec shared by every layer is read and validated once. */
    private static <S> List<S> specs(List<ConfigReader> readers, java.util.function.Function<ConfigReader, S> read) {
        Map<ConfigReader, S> done = new IdentityHashMap<>();
        List<S> out = new ArrayList<>();
        for (ConfigReader c : readers) {
            out.add(done.computeIfAbsent(c, read));
        }
        return out;
    }

    /** The mapping {@link #read} accepts, for writing a resolved config. */
    public Map<String, Object> toMap() {
        Map<String, Object> m = ConfigReader.ordered();
        m.put("vocab", vocab);
        m.put("d_model", dModel);
        m.put("n_layer", nLayer);
        if (nHead > 0) {
            m.put("n_head", nHead);
            m.put("n_kv_head", nKvHead);
        }
        m.put("pos_emb", posEmb.key());
        if (maxSeq > 0) {
            m.put("max_seq", maxSeq);
        }
        m.put("mixer", perLayerMap(mixers.stream().map(MixerSpec::toMap).toList()));
        m.put("channel_mixer", perLayerMap(channelMixers.stream().map(ChannelSpec::toMap).toList()));
        m.put("mlp_ratio", mlpRatio);
        m.put("dropout", dropout);
        m.put("init_std", initStd);
        m.put("layer_norm_eps", layerNormEps);
        if (deq != null) {
            m.put("deq", deq.toMap());
        }
        return m;
    }

    /** One mapping when every layer has the same spec, else the list. */
    private static Object perLayerMap(List<Map<String, Object>> specs) {
        return specs.stream().distinct().count() == 1 ? specs.get(0) : specs;
    }

    /** Reads a model YAML file (the train section is ignored here). */
    public static ModelConfig load(Path file) {
        return RunConfig.load(file).model();
    }
}
