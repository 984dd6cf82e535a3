package org.kindling.models.mixers.skein;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Collections;
import java.util.Map;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;
import org.kindling.models.DecodeSession;
import org.kindling.models.Gpt;
import org.kindling.models.config.ConfigReader;
import org.kindling.models.config.LayerDefaults;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.mixers.MixerSpec;
import org.kindling.models.mixers.Mixers;
import org.kindling.ops.Device;
import org.kindling.ops.cpu.CpuDevice;

/** The skein mixer in a model with few samples, so decoding goes through sketched prefixes; its config keys. */
class SkeinMixerTest {
    private static final int VOCAB = 29;
    private static final LayerDefaults DEFAULTS = new LayerDefaults(16, 2, 2, 4);

    private static MixerSpec read(Map<String, Object> m) {
        Map<String, Object> o = ConfigReader.ordered();
        o.put("type", "skein");
        o.putAll(m);
        return Mixers.read(new ConfigReader("test.yaml", "mixer", o), DEFAULTS);
    }

    @Test
    void causalDecodingThroughSketchedPrefixesEqualsTheFullForward() {
        // 4 samples: every tile from the second on attends a sketch of its prefix.
        MixerSpec spec = read(Map.of("samples", 4));
        ModelConfig cfg = ModelConfig.gpt(VOCAB, 16, 2, 2, 2, 1, 4, 0, 0.2, 1e-5).withPositions(ModelConfig.PosEmb.NONE, 0)
                .withMixers(Collections.nCopies(2, spec));
        SplittableRandom r = new SplittableRandom(5);
        int[] seq = new int[61];
        for (int i = 0; i < seq.length; i++) {
            seq[i] = r.nextInt(VOCAB);
        }
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(cfg, dev, 3)) {
            float[] full = model.logits(TokenBatch.single(seq)).toFloatArray();
            try (DecodeSession s = model.newSession(1)) {
                float[] pre = s.stepAll(java.util.Arrays.copyOf(seq, 13));
                for (int i = 0; i < 13 * VOCAB; i++) {
                    assertEquals(full[i], pre[i], 2e-4f * (1 + Math.abs(full[i])), "prefill logit " + i);
                }
                for (int t = 13; t < seq.length; t++) {
                    float[] got = s.stepAll(new int[] {seq[t]});
                    for (int i = 0; i < VOCAB; i++) {
                        float w = full[t * VOCAB + i];
                        assertEquals(w, got[i], 2e-4f * (1 + Math.abs(w)), "token " + t + " logit " + i);
                    }
                }
            }
        }
    }

    @Test
    void keysDefaultsAndErrors() {
        SkeinSpec d = (SkeinSpec) read(Map.of());
        assertEquals(new SkeinSpec(2, SkeinSpec.DEFAULT_SAMPLES, SkeinSpec.DEFAULT_SAMPLES, true, true), d);
        SkeinSpec bi = (SkeinSpec) read(Map.of("causal", false, "samples", 32));
        assertEquals(new SkeinSpec(2, 32, 32, false, true), bi);
        assertEquals(bi, read(bi.toMap()));
        assertEquals(d, read(d.toMap()));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> read(Map.of("pilot", 8)));
        assertTrue(e.getMessage().contains("pilot") && e.getMessage().contains("causal"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> read(Map.of("samples", 0)));
        assertTrue(e.getMessage().contains("samples"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> read(Map.of("heads", 3)));
        assertTrue(e.getMessage().contains("heads"), e.getMessage());
    }

    @Test
    void theBidirectionalModeRefusesToDecode() {
        MixerSpec spec = read(Map.of("causal", false));
        ModelConfig cfg = ModelConfig.gpt(VOCAB, 16, 1, 2, 2, 1, 4, 0, 0.2, 1e-5).withPositions(ModelConfig.PosEmb.NONE, 0)
                .withMixers(Collections.nCopies(1, spec));
        try (Device dev = CpuDevice.open(1); Gpt model = new Gpt(cfg, dev, 3)) {
            UnsupportedOperationException e = assertThrows(UnsupportedOperationException.class, () -> model.newSession(1).close());
            assertTrue(e.getMessage().contains("causal"), e.getMessage());
        }
    }
}
