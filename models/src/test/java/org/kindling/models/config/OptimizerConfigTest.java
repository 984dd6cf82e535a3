package org.kindling.models.config;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import org.junit.jupiter.api.Test;

class OptimizerConfigTest {
    private static final Path TINY = ModelConfigTest.PRESETS.resolve("tiny.yaml");

    private static RunConfig load(Map<String, String> overrides) {
        return RunConfig.load(TINY, overrides);
    }

    @Test
    void adamwIsTheDefaultAndMfacReadsItsKeys() {
        assertEquals(OptimizerConfig.ADAMW_DEFAULT, RunConfig.load(TINY).train().optimizer());
        Map<String, String> set = new LinkedHashMap<>();
        set.put("optimizer", "mfac");
        assertEquals(OptimizerConfig.mfac(16, 1e-4, 0), load(set).train().optimizer());
        set.put("optimizer.ngrads", "32");
        set.put("optimizer.damp", "1e-5");
        set.put("train.optimizer.momentum", "0.9");
        RunConfig r = load(set);
        assertEquals(OptimizerConfig.mfac(32, 1e-5, 0.9), r.train().optimizer());
        assertEquals(r, RunConfig.fromMap(r.toMap(), "resolved"));
        assertEquals("adamw", RunConfig.load(TINY).train().toMap().get("optimizer"));
    }

    private static String error(String... kv) {
        Map<String, String> set = new LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) {
            set.put(kv[i], kv[i + 1]);
        }
        return assertThrows(IllegalArgumentException.class, () -> load(set)).getMessage();
    }

    @Test
    void badValuesNameTheKey() {
        assertTrue(error("optimizer", "sgd").contains("train.optimizer.type must be adamw or mfac, got 'sgd'"));
        assertTrue(error("optimizer", "mfac", "optimizer.ngrads", "0").contains("train.optimizer.ngrads must be at least 1, got 0"));
        assertTrue(error("optimizer", "mfac", "optimizer.damp", "0").contains("train.optimizer.damp must be a finite number > 0"));
        assertTrue(error("optimizer", "mfac", "optimizer.momentum", "1").contains("train.optimizer.momentum must be in [0, 1), got 1.0"));
        // M-FAC's keys under AdamW would do nothing: refused rather than ignored.
        assertTrue(error("optimizer.ngrads", "8").contains("unknown key train.optimizer.ngrads"));
    }

    /** offload.optimizer_state: device by default, host on request, written back by toMap; M-FAC cannot offload. */
    @Test
    void offloadPlacesAdamWsMoments() {
        assertEquals(false, RunConfig.load(TINY).train().offloadOptimizerState());
        Map<String, String> set = new LinkedHashMap<>();
        set.put("offload.optimizer_state", "host");
        RunConfig r = load(set);
        assertTrue(r.train().offloadOptimizerState());
        assertEquals(Map.of("optimizer_state", "host"), r.train().toMap().get("offload"));
        assertEquals(r, RunConfig.fromMap(r.toMap(), "resolved"));
        assertTrue(error("offload.optimizer_state", "disk").contains("train.offload.optimizer_state must be device or host, got 'disk'"));
        assertTrue(error("offload.params", "host").contains("unknown key train.offload.params"));
        assertTrue(error("offload.optimizer_state", "host", "optimizer", "mfac")
                .contains("offload.optimizer_state: host holds AdamW's moments; M-FAC keeps its window"));
    }

    /** zero: 0 by default, 1 on request, written back by toMap; other values and M-FAC are refused naming the key. */
    @Test
    void zeroShardsAdamWOnly() {
        assertEquals(0, RunConfig.load(TINY).train().zero());
        Map<String, String> set = new LinkedHashMap<>();
        set.put("zero", "1");
        RunConfig r = load(set);
        assertEquals(1, r.train().zero());
        assertEquals(1, r.train().toMap().get("zero"));
        assertEquals(r, RunConfig.fromMap(r.toMap(), "resolved"));
        assertTrue(error("zero", "2").contains("train.zero must be 0 (off) or 1 (shard the optimizer state), got 2"));
        String mfac = error("zero", "1", "optimizer", "mfac");
        assertTrue(mfac.contains("zero: 1 shards AdamW's moments") && mfac.contains("use zero: 0 with optimizer mfac"), mfac);
    }
}
