package org.kindling.models.config;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.kindling.models.Gpt;
import org.kindling.models.channel.MlpSpec;
import org.kindling.models.channel.MoeSpec;
import org.kindling.models.channel.SparseFfnSpec;
import org.kindling.models.mixers.MixerSpec;
import org.kindling.models.mixers.attention.AttentionSpec;
import org.kindling.ops.Device;
import org.kindling.ops.cpu.CpuDevice;

class ModelConfigTest {
    static final Path PRESETS = Path.of("..", "conf", "models");

    private static long parameters(ModelConfig cfg) {
        long c = cfg.dModel();
        long perLayer = 2 * 2 * c + (c * c + c) * 2 + 2 * (c * (c / cfg.nHead()) * cfg.nKvHead() + (c / cfg.nHead()) * cfg.nKvHead())
                + 2 * cfg.mlpRatio() * c * c + cfg.mlpRatio() * c + c;
        return (long) cfg.vocab() * c + (long) cfg.maxSeq() * c + cfg.nLayer() * perLayer + 2 * c;
    }

    @Test
    void presetsLoadWithTheirSizes() {
        RunConfig tiny = RunConfig.load(PRESETS.resolve("tiny.yaml"));
        assertEquals(64, tiny.model().dModel());
        assertEquals(List.of("attention", "attention"), tiny.model().mixers().stream().map(MixerSpec::type).toList());
        assertEquals(300, tiny.train().maxSteps());
        ModelConfig small = ModelConfig.load(PRESETS.resolve("small.yaml"));
        long smallParams = parameters(small);
        assertTrue(smallParams > 9_000_000 && smallParams < 11_000_000, "small has " + smallParams + " parameters");
        ModelConfig hybrid = ModelConfig.load(PRESETS.resolve("h3-small.yaml"));
        assertEquals(List.of("h3", "attention", "h3", "h3", "attention", "h3"), hybrid.mixers().stream().map(MixerSpec::type).toList());
        assertEquals(ModelConfig.PosEmb.NONE, hybrid.posEmb());
        ModelConfig gpt2 = ModelConfig.load(PRESETS.resolve("gpt2-124m.yaml"));
        assertEquals(124_439_808L, parameters(gpt2), "GPT-2 small's parameter count");
    }

    @Test
    void parameterCountMatchesTheBuiltModel() {
        ModelConfig tiny = ModelConfig.load(PRESETS.resolve("tiny.yaml"));
        try (Device dev = CpuDevice.open(1); Gpt model = new Gpt(tiny, dev, 1)) {
            assertEquals(parameters(tiny), model.params().count());
        }
    }

    /** Counted from the declarations alone (GPT-2 small without allocating it), and a mixture's unvisited experts are inactive. */
    @Test
    void totalAndActiveParameterCounts() {
        ModelConfig gpt2 = ModelConfig.load(PRESETS.resolve("gpt2-124m.yaml"));
        assertEquals(new Gpt.ParameterCounts(124_439_808L, 124_439_808L), Gpt.parameterCounts(gpt2));
        ModelConfig tiny = ModelConfig.load(PRESETS.resolve("tiny.yaml"));
        ModelConfig moe = tiny.withChannelMixers(List.of(new MlpSpec(4), new MoeSpec(8, 96, 2, 0, 0.01, 0.001, 0)));
        try (Device dev = CpuDevice.open(1); Gpt model = new Gpt(moe, dev, 1)) {
            Gpt.ParameterCounts counts = model.parameterCounts();
            assertEquals(counts, Gpt.parameterCounts(moe));
            assertEquals(model.params().count(), counts.total());
            int c = tiny.dModel();
            // Layer 1 trades the MLP (with biases) for a router and 8 bias-free experts, of which a token visits 2.
            long mlp = 2L * 4 * c * c + 4 * c + c;
            assertEquals(parameters(tiny) - mlp + 8L * c + 8 * 2L * 96 * c, counts.total());
            assertEquals(counts.total() - 6 * 2L * 96 * c, counts.active());
        }
    }

    /** A YAML sparse FFN layer: its keys resolve with defaults, and a token's active parameters leave out the unchosen units. */
    @Test
    void aSparseFfnLayerFromYamlAndItsActiveParameters() {
        String yaml = "vocab: 10\nd_model: 8\nn_layer: 2\nn_head: 2\nmax_seq: 16\n"
                + "channel_mixer: [mlp, {type: sparse_ffn, block: 4, controller_rank: 3}]\n";
        ModelConfig cfg = RunConfig.parse(yaml, "m.yaml").model();
        assertEquals(new SparseFfnSpec(32, 4, 3, 0.1, 0.3), cfg.channelMixers().get(1));
        try (Device dev = CpuDevice.open(1); Gpt model = new Gpt(cfg, dev, 1)) {
            Gpt.ParameterCounts counts = model.parameterCounts();
            assertEquals(model.params().count(), counts.total());
            // fc 32·8 + 32, proj 32·8 + 8, controller 3·8 + 32·3 + 32; a token uses 8 of the 32 units.
            long mlp = 2L * 4 * 8 * 8 + 4 * 8 + 8;
            long sparse = 32 * 8 + 32 + 32 * 8 + 8 + 3 * 8 + 32 * 3 + 32;
            assertEquals(parameters(cfg.withChannelMixers(List.of(new MlpSpec(4), new MlpSpec(4)))) - mlp + sparse, counts.total());
            assertEquals(counts.total() - 24 * (2 * 8 + 1), counts.active());
        }
    }

    @Test
    void unknownKeysAndWrongTypesNameTheKey() {
        String base = "vocab: 10\nd_model: 8\nn_layer: 1\nn_head: 2\nmax_seq: 16\n";
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> RunConfig.parse(base + "n_heads: 3\n", "m.yaml"));
        assertTrue(e.getMessage().startsWith("m.yaml: unknown key n_heads"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> RunConfig.parse(base.replace("n_layer: 1", "n_layer: two"), "m.yaml"));
        assertEquals("m.yaml: n_layer must be an integer, got \"two\"", e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> RunConfig.parse(base + "train:\n  lr: fast\n", "m.yaml"));
        assertEquals("m.yaml: train.lr must be a number, got \"fast\"", e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> RunConfig.parse(base + "train:\n  eval_interval: -1\n", "m.yaml"));
        assertEquals("m.yaml: train.eval_interval must be >= 0 (0 = off), got -1", e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> RunConfig.parse(base + "train:\n  eval_batches: 0\n", "m.yaml"));
        assertEquals("m.yaml: train.eval_batches must be >= 1, got 0", e.getMessage());
        RunConfig evalDefaults = RunConfig.parse(base + "train:\n  log_interval: 7\n", "m.yaml");
        assertEquals(7, evalDefaults.train().evalInterval(), "eval_interval defaults to log_interval");
        assertEquals(TrainConfig.DEFAULT_EVAL_BATCHES, evalDefaults.train().evalBatches());
        assertEquals(evalDefaults.train(), RunConfig.parse(evalDefaults.toYaml(), "again.yaml").train(),
                "the eval keys survive a round trip");
        e = assertThrows(IllegalArgumentException.class, () -> RunConfig.parse(base + "train:\n  max_step: 3\n", "m.yaml"));
        assertTrue(e.getMessage().startsWith("m.yaml: unknown key train.max_step"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> RunConfig.parse(base.replace("vocab: 10\n", ""), "m.yaml"));
        assertEquals("m.yaml: vocab is required", e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> RunConfig.parse(base.replace("n_head: 2", "n_head: 3"), "m.yaml"));
        assertEquals("m.yaml: mixer.heads = 3 does not divide d_model 8", e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> RunConfig.parse(base + "mixer: [attention, s4]\n", "m.yaml"));
        assertTrue(e.getMessage().contains("mixer lists 2 entries but n_layer is 1"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> RunConfig.parse(base + "mixer: [s4]\n", "m.yaml"));
        assertTrue(e.getMessage().startsWith("m.yaml: mixer[0].type is \"s4\"; known token mixers: attention"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> RunConfig.parse(base + "mixer: {type: attention, heads: 2, window: 4}\n",
                "m.yaml"));
        assertTrue(e.getMessage().startsWith("m.yaml: unknown key mixer.window"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> RunConfig.parse(base.replace("n_layer: 1", "n_layer: 2")
                + "mixer: [attention, {type: attention, kv_heads: 3}]\n", "m.yaml"));
        assertEquals("m.yaml: mixer[1].kv_heads = 3 does not divide heads 2", e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> RunConfig.parse(base.replace("max_seq: 16\n", ""), "m.yaml"));
        assertEquals("m.yaml: max_seq is required", e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> RunConfig.parse(base + "pos_emb: rotary\n", "m.yaml"));
        assertEquals("m.yaml: pos_emb is \"rotary\"; known: learned, none", e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> RunConfig.parse(base + "dropout: 1.0\n", "m.yaml"));
        assertTrue(e.getMessage().contains("dropout must be in [0, 1)"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> RunConfig.parse("- 1\n", "m.yaml"));
        assertTrue(e.getMessage().contains("expected a mapping"), e.getMessage());
    }

    @Test
    void positionsAreAChoiceAndMaxSeqOnlyLimitsWhereSet() {
        String base = "vocab: 10\nd_model: 8\nn_layer: 2\nn_head: 2\npos_emb: none\n";
        ModelConfig free = RunConfig.parse(base, "m.yaml").model();
        assertEquals(ModelConfig.PosEmb.NONE, free.posEmb());
        assertEquals(0, free.maxSeq());
        try (Device dev = CpuDevice.open(1); Gpt model = new Gpt(free, dev, 1)) {
            assertTrue(model.params().list().stream().noneMatch(p -> p.name().startsWith("wpe")));
            // No table, no limit: a sequence longer than any max_seq a learned table would have had.
            model.logits(org.kindling.models.data.TokenBatch.single(new int[300]));
        }
        assertEquals(free, RunConfig.fromMap(RunConfig.parse(base, "m.yaml").toMap(), "resolved").model());
    }

    @Test
    void setReachesNestedKeysAndLayers(@org.junit.jupiter.api.io.TempDir Path dir) throws java.io.IOException {
        Path file = dir.resolve("m.yaml");
        java.nio.file.Files.writeString(file, "vocab: 10\nd_model: 8\nn_layer: 2\nn_head: 2\nmax_seq: 16\nmixer: attention\n");
        ModelConfig m = RunConfig.load(file, java.util.Map.of("mixer.kv_heads", "1")).model();
        assertEquals(List.of(new AttentionSpec(2, 1), new AttentionSpec(2, 1)), m.mixers());
        java.nio.file.Files.writeString(file, "vocab: 10\nd_model: 8\nn_layer: 2\nn_head: 2\nmax_seq: 16\n"
                + "mixer: [attention, {type: attention, heads: 4}]\n");
        RunConfig r = RunConfig.load(file, new java.util.LinkedHashMap<>(java.util.Map.of("mixer.0.kv_heads", "1", "lr", "0.5")));
        assertEquals(List.of(new AttentionSpec(2, 1), new AttentionSpec(4, 2)), r.model().mixers());
        assertEquals(0.5, r.train().lr());
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> RunConfig.load(file, java.util.Map.of("mixer.5.heads", "1")));
        assertTrue(e.getMessage().contains("index 5 is past the 2 entries"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> RunConfig.load(file, java.util.Map.of("vocab.size", "1")));
        assertTrue(e.getMessage().contains("vocab is a value"), e.getMessage());
    }

    /** The MLP's projections are a per-spec choice; the resolved config (what checkpoints keep) carries the layout keys. */
    @Test
    void mlpLinearKindIsReadRoundTripsAndRejectsUnknownValues() {
        String base = "vocab: 10\nd_model: 16\nn_layer: 2\nn_head: 2\nmax_seq: 16\n";
        RunConfig fly = RunConfig.parse(base + "channel_mixer: [mlp, {type: mlp, linear: pixelfly, pixelfly_block: 8,"
                + " pixelfly_butterfly_size: 4, pixelfly_factors: 1, pixelfly_rank: 4, pixelfly_gate: true}]\n", "m.yaml");
        org.kindling.models.nn.LinearSpec spec = ((MlpSpec) fly.model().channelMixers().get(1)).linear();
        assertEquals(new org.kindling.models.nn.LinearSpec(org.kindling.models.nn.LinearSpec.Kind.PIXELFLY, 8, 4, 1, 4, true), spec);
        assertTrue(((MlpSpec) fly.model().channelMixers().get(0)).linear().dense());
        RunConfig attn = RunConfig.parse(base + "mixer: {type: attention, linear: butterfly}\n", "m.yaml");
        assertEquals(org.kindling.models.nn.LinearSpec.Kind.BUTTERFLY,
                ((org.kindling.models.mixers.attention.AttentionSpec) attn.model().mixers().get(0)).linear().kind());
        assertTrue(((MlpSpec) attn.model().channelMixers().get(0)).linear().dense(), "the MLP's choice is separate");
        assertEquals(attn, RunConfig.fromMap(attn.toMap(), "resolved"));
        assertEquals(fly, RunConfig.fromMap(fly.toMap(), "resolved"));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> RunConfig.parse(base + "channel_mixer: {type: mlp, linear: sparse}\n", "m.yaml"));
        assertTrue(e.getMessage().contains("channel_mixer.linear") && e.getMessage().contains("\"sparse\""), e.getMessage());
        e = assertThrows(IllegalArgumentException.class,
                () -> RunConfig.parse(base + "channel_mixer: {type: mlp, linear: butterfly, pixelfly_rank: 4}\n", "m.yaml"));
        assertTrue(e.getMessage().contains("pixelfly_rank"), e.getMessage());
        try (Device dev = CpuDevice.open(1); Gpt model = new Gpt(fly.model(), dev, 1)) {
            assertEquals(Gpt.parameterCounts(fly.model()).total(), model.params().count());
        }
    }

    /** The attention mask: read with its defaults, round-tripped only when not dense, and each bad key named. */
    @Test
    void attentionMaskIsReadRoundTripsAndRejectsBadKeys() {
        String base = "vocab: 10\nd_model: 16\nn_layer: 2\nn_head: 2\nmax_seq: 300\n";
        RunConfig masked = RunConfig.parse(base + "mixer: {type: attention, mask: flat_butterfly}\n", "m.yaml");
        AttentionSpec a = (AttentionSpec) masked.model().mixers().get(0);
        assertEquals(new AttentionSpec(2, 2, org.kindling.models.nn.LinearSpec.DENSE, AttentionSpec.Mask.FLAT_BUTTERFLY,
                org.kindling.ops.BlockMask.GRANULE, AttentionSpec.DEFAULT_MASK_BUTTERFLY_SIZE), a);
        assertEquals(masked, RunConfig.fromMap(masked.toMap(), "resolved"));
        assertEquals("flat_butterfly", a.toMap().get("mask"));
        RunConfig set = RunConfig.parse(base + "mixer: [attention, {type: attention, mask: flat_butterfly, mask_block: 256,"
                + " mask_butterfly_size: 2}]\n", "m.yaml");
        assertEquals(new AttentionSpec(2, 2, org.kindling.models.nn.LinearSpec.DENSE, AttentionSpec.Mask.FLAT_BUTTERFLY, 256, 2),
                set.model().mixers().get(1));
        AttentionSpec dense = (AttentionSpec) set.model().mixers().get(0);
        assertEquals(AttentionSpec.Mask.DENSE, dense.mask());
        assertTrue(!dense.toMap().containsKey("mask") && !dense.toMap().containsKey("mask_block"), dense.toMap().toString());
        assertEquals(set, RunConfig.fromMap(set.toMap(), "resolved"));
        for (String[] bad : new String[][] {
                {"mask: sparse", "mixer.mask", "\"sparse\""},
                {"mask: flat_butterfly, mask_block: 64", "mixer.mask_block", "multiple of the attention kernels' tile 128"},
                {"mask: flat_butterfly, mask_block: 0", "mixer.mask_block", ""},
                {"mask: flat_butterfly, mask_butterfly_size: 6", "mixer.mask_butterfly_size", "not a power of two"},
                {"mask_block: 256", "mixer.mask_block", "applies only with mask: flat_butterfly"},
                {"mask: dense, mask_butterfly_size: 4", "mixer.mask_butterfly_size", "applies only with mask: flat_butterfly"}}) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                    () -> RunConfig.parse(base + "mixer: {type: attention, " + bad[0] + "}\n", "m.yaml"));
            assertTrue(e.getMessage().contains(bad[1]) && e.getMessage().contains(bad[2]), bad[0] + ": " + e.getMessage());
        }
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> RunConfig.parse(
                "vocab: 10\nd_model: 16\nn_layer: 1\nn_head: 2\npos_emb: none\nmixer: {type: attention, mask: flat_butterfly}\n",
                "m.yaml"));
        assertTrue(e.getMessage().contains("mixer.mask") && e.getMessage().contains("max_seq"), e.getMessage());
    }

    @Test
    void resolvedConfigRoundTrips() {
        RunConfig tiny = RunConfig.load(PRESETS.resolve("tiny.yaml"));
        assertEquals(tiny, RunConfig.fromMap(tiny.toMap(), "resolved"));
    }

    @Test
    void scheduleWarmsUpThenDecays() {
        TrainConfig t = new TrainConfig(1, 1e-3, 1e-4, 10, 110, 0.1, 0.9, 0.95, 1e-8, 1, 1, 64, 10, 0, 3);
        assertEquals(1e-4, t.lrAt(0), 1e-12);
        assertEquals(1e-3, t.lrAt(9), 1e-12);
        assertEquals(1e-3, t.lrAt(10), 1e-12);
        assertEquals(5.5e-4, t.lrAt(60), 1e-12);
        assertEquals(1e-4, t.lrAt(110), 1e-12);
    }
}
