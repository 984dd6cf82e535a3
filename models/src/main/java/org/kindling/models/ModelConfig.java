package org.kindling.models;

import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * A decoder-only language model, as written in {@code conf/models/*.yaml}. Token and channel
 * mixers are named per layer, so hybrids are one config away.
 *
 * @param vocab tokens V
 * @param dModel channels C
 * @param nLayer blocks
 * @param nHead query heads NH; HS = C / NH
 * @param nKvHead key/value heads NKV (grouped-query attention when below NH)
 * @param maxSeq positions the learned position embedding covers
 * @param mixers token mixer per layer
 * @param channelMixers channel mixer per layer
 * @param mlpRatio MLP hidden width as a multiple of C
 * @param dropout dropout probability after the embeddings and on each residual branch, while training (0 = off)
 * @param initStd standard deviation of weight init; residual projections use initStd/√(2·nLayer)
 * @param layerNormEps LayerNorm epsilon
 */
public record ModelConfig(int vocab, int dModel, int nLayer, int nHead, int nKvHead, int maxSeq, List<String> mixers,
                          List<String> channelMixers, int mlpRatio, double dropout, double initStd, double layerNormEps) {

    /** Token mixers this build implements. */
    public static final Set<String> MIXERS = Set.of("attention");
    /** Channel mixers this build implements. */
    public static final Set<String> CHANNEL_MIXERS = Set.of("mlp");

    public ModelConfig {
        mixers = List.copyOf(mixers);
        channelMixers = List.copyOf(channelMixers);
        positive("vocab", vocab);
        positive("d_model", dModel);
        positive("n_layer", nLayer);
        positive("n_head", nHead);
        positive("n_kv_head", nKvHead);
        positive("max_seq", maxSeq);
        positive("mlp_ratio", mlpRatio);
        if (dModel % nHead != 0) {
            throw new IllegalArgumentException("d_model " + dModel + " is not divisible by n_head " + nHead);
        }
        if (nHead % nKvHead != 0) {
            throw new IllegalArgumentException("n_head " + nHead + " is not a multiple of n_kv_head " + nKvHead);
        }
        if (dModel / nHead > org.kindling.ops.Attention.MAX_HEAD_DIM) {
            throw new IllegalArgumentException("head dim d_model/n_head = " + dModel / nHead + " exceeds "
                    + org.kindling.ops.Attention.MAX_HEAD_DIM);
        }
        checkNames("mixer", mixers, MIXERS, nLayer);
        checkNames("channel_mixer", channelMixers, CHANNEL_MIXERS, nLayer);
        if (!(dropout >= 0 && dropout < 1)) {
            throw new IllegalArgumentException("dropout must be in [0, 1), got " + dropout);
        }
        if (!(initStd > 0)) {
            throw new IllegalArgumentException("init_std must be > 0, got " + initStd);
        }
        if (!(layerNormEps > 0)) {
            throw new IllegalArgumentException("layer_norm_eps must be > 0, got " + layerNormEps);
        }
    }

    private static void positive(String key, int v) {
        if (v < 1) {
            throw new IllegalArgumentException(key + " must be at least 1, got " + v);
        }
    }

    private static void checkNames(String key, List<String> names, Set<String> allowed, int layers) {
        if (names.size() != layers) {
            throw new IllegalArgumentException(key + " lists " + names.size() + " layers but n_layer is " + layers);
        }
        for (int i = 0; i < names.size(); i++) {
            if (!allowed.contains(names.get(i))) {
                throw new IllegalArgumentException(key + " of layer " + i + " is \"" + names.get(i) + "\"; known: "
                        + String.join(", ", allowed.stream().sorted().toList()));
            }
        }
    }

    public int headDim() {
        return dModel / nHead;
    }

    /** Reads the model keys of a config mapping (the {@code train} section is read by {@link TrainConfig}). */
    static ModelConfig read(ConfigReader r) {
        int vocab = r.integer("vocab", null);
        int dModel = r.integer("d_model", null);
        int nLayer = r.integer("n_layer", null);
        int nHead = r.integer("n_head", null);
        int nKvHead = r.integer("n_kv_head", nHead);
        int maxSeq = r.integer("max_seq", null);
        List<String> mixers = r.perLayer("mixer", "attention", nLayer);
        List<String> channelMixers = r.perLayer("channel_mixer", "mlp", nLayer);
        int mlpRatio = r.integer("mlp_ratio", 4);
        double dropout = r.number("dropout", 0.0);
        double initStd = r.number("init_std", 0.02);
        double eps = r.number("layer_norm_eps", 1e-5);
        try {
            return new ModelConfig(vocab, dModel, nLayer, nHead, nKvHead, maxSeq, mixers, channelMixers, mlpRatio, dropout,
                    initStd, eps);
        } catch (IllegalArgumentException e) {
            throw r.invalid(e);
        }
    }

    /** The mapping {@link #read} accepts, for writing a resolved config. */
    public Map<String, Object> toMap() {
        Map<String, Object> m = ConfigReader.ordered();
        m.put("vocab", vocab);
        m.put("d_model", dModel);
        m.put("n_layer", nLayer);
        m.put("n_head", nHead);
        m.put("n_kv_head", nKvHead);
        m.put("max_seq", maxSeq);
        m.put("mixer", mixers);
        m.put("channel_mixer", channelMixers);
        m.put("mlp_ratio", mlpRatio);
        m.put("dropout", dropout);
        m.put("init_std", initStd);
        m.put("layer_norm_eps", layerNormEps);
        return m;
    }

    /** Reads a model YAML file (the train section is ignored here). */
    public static ModelConfig load(Path file) {
        return RunConfig.load(file).model();
    }
}
