package org.kindling.models;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.kindling.ops.Device;

class ModelConfigTest {
    private static final Path PRESETS = Path.of("..", "conf", "models");

    private static long parameters(ModelConfig cfg) {
        long c = cfg.dModel();
        long perLayer = 2 * 2 * c + (c * c + c) * 2 + 2 * (c * cfg.headDim() * cfg.nKvHead() + cfg.headDim() * cfg.nKvHead())
                + 2 * cfg.mlpRatio() * c * c + cfg.mlpRatio() * c + c;
        return (long) cfg.vocab() * c + (long) cfg.maxSeq() * c + cfg.nLayer() * perLayer + 2 * c;
    }

    @Test
    void presetsLoadWithTheirSizes() {
        RunConfig tiny = RunConfig.load(PRESETS.resolve("tiny.yaml"));
        assertEquals(64, tiny.model().dModel());
        assertEquals(List.of("attention", "attention"), tiny.model().mixers());
        assertEquals(300, tiny.train().maxSteps());
        ModelConfig small = ModelConfig.load(PRESETS.resolve("small.yaml"));
        long smallParams = parameters(small);
        assertTrue(smallParams > 9_000_000 && smallParams < 11_000_000, "small has " + smallParams + " parameters");
        ModelConfig gpt2 = ModelConfig.load(PRESETS.resolve("gpt2-124m.yaml"));
        assertEquals(124_439_808L, parameters(gpt2), "GPT-2 small's parameter count");
    }

    @Test
    void parameterCountMatchesTheBuiltModel() {
        ModelConfig tiny = ModelConfig.load(PRESETS.resolve("tiny.yaml"));
        try (Device dev = Device.cpu(1); Gpt model = new Gpt(tiny, dev, 1)) {
            assertEquals(parameters(tiny), model.params().count());
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
        e = assertThrows(IllegalArgumentException.class, () -> RunConfig.parse(base + "train:\n  max_step: 3\n", "m.yaml"));
        assertTrue(e.getMessage().startsWith("m.yaml: unknown key train.max_step"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> RunConfig.parse(base.replace("vocab: 10\n", ""), "m.yaml"));
        assertEquals("m.yaml: vocab is required", e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> RunConfig.parse(base.replace("n_head: 2", "n_head: 3"), "m.yaml"));
        assertTrue(e.getMessage().contains("not divisible by n_head"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> RunConfig.parse(base + "mixer: [attention, s4]\n", "m.yaml"));
        assertTrue(e.getMessage().contains("mixer lists 2 entries but n_layer is 1"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> RunConfig.parse(base + "mixer: [s4]\n", "m.yaml"));
        assertTrue(e.getMessage().contains("mixer of layer 0 is \"s4\""), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> RunConfig.parse(base + "dropout: 1.0\n", "m.yaml"));
        assertTrue(e.getMessage().contains("dropout must be in [0, 1)"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> RunConfig.parse("- 1\n", "m.yaml"));
        assertTrue(e.getMessage().contains("expected a mapping"), e.getMessage());
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
