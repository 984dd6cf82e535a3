package org.kindling.cli;

import com.fasterxml.jackson.databind.JsonNode;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.kindling.api.Presets;
import org.kindling.models.channel.MlpSpec;
import org.kindling.models.channel.MoeSpec;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.RunConfig;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The MoE benches of issue 12 at tiny sizes: bench moe's rows and checks, MoE models in bench train and recall, the preset. */
class MoeBenchTest {
    private static final List<String> MOE_METRICS = List.of("moe_balance_loss", "moe_dropped_fraction", "moe_load_imbalance",
            "moe_z_loss");

    @Test
    void moeMeasuresDroplessEachCapacityAndTheDenseMlpInOneRun() throws Exception {
        CliRun r = CliRun.of("bench", "moe", "--experts", "4", "--top-k", "2", "--tokens", "64", "--d-model", "16", "--ffn", "24",
                "--capacity-factors", "0.5,1.0,2.0", "--reps", "1", "--threads", "1", "--json");
        List<JsonNode> rows = r.rows(null);
        assertEquals(5, rows.size(), r.out());
        for (String line : r.out().strip().split("\n")) {
            assertEquals(List.of("bench", "impl", "capacity_factor", "ms", "dropped_fraction"), CliTest.fieldNames(line), line);
        }
        List<String> impls = rows.stream().map(n -> n.get("impl").asText()).toList();
        assertEquals(List.of("dropless", "capacity", "capacity", "capacity", "dense"), impls);
        List<Double> factors = rows.subList(1, 4).stream().map(n -> n.get("capacity_factor").asDouble()).toList();
        assertEquals(List.of(0.5, 1.0, 2.0), factors);
        for (JsonNode row : rows) {
            assertEquals("moe", row.get("bench").asText());
            assertTrue(row.get("ms").asDouble() > 0, row.toString());
            double dropped = row.get("dropped_fraction").asDouble();
            assertTrue(dropped >= 0 && dropped < 1, row.toString());
        }
        for (JsonNode row : List.of(rows.get(0), rows.get(4))) {
            assertTrue(row.get("capacity_factor").isNull(), row.toString());
            assertEquals(0.0, row.get("dropped_fraction").asDouble(), row.toString());
        }
        // Half the slots the entries need: at least half of them find their expert full.
        assertTrue(rows.get(1).get("dropped_fraction").asDouble() >= 0.5, rows.get(1).toString());
        assertTrue(rows.get(1).get("dropped_fraction").asDouble() >= rows.get(3).get("dropped_fraction").asDouble(), r.out());
        assertTrue(r.err().contains("dropless / dense = "), r.err());
        assertTrue(r.err().contains("dropless / capacity-2.0 = "), r.err());
        assertTrue(r.err().contains("dense MLP H=48"), r.err());
    }

    @Test
    void moeChecksItsOptions() {
        CliRun.assertUsageError("--top-k 3 exceeds --experts 2", "bench", "moe", "--experts", "2", "--top-k", "3");
        CliRun.assertUsageError("--top-k 1 × --ffn 100 = 100 is not a multiple of --d-model 64", "bench", "moe", "--d-model", "64", "--ffn",
                "100");
        CliRun.assertUsageError("--experts must be at least 1, got 0", "bench", "moe", "--experts", "0");
        CliRun.assertUsageError("--capacity-factors must be finite and above 0, got 0.0", "bench", "moe", "--capacity-factors", "1,0");
        CliRun.assertUsageError("--capacity-factors lists 1.0 twice", "bench", "moe", "--capacity-factors", "1,1.0");
        CliRun.assertUsageError("exceeds one tensor's 2^31-1 elements", "bench", "moe", "--tokens", "2000000000", "--d-model", "2", "--ffn",
                "2");
    }

    @Test
    void benchTrainTakesOverridesThatMakeAMixture() throws Exception {
        CliRun r = CliRun.of("bench", "train", "--preset", "tiny", "--set", "channel_mixer=moe", "--set", "channel_mixer.experts=4",
                "--seq", "16", "--batch", "2", "--steps", "1", "--warmup", "0", "--threads", "1", "--json");
        JsonNode row = r.rows(null).get(0);
        List<String> fields = CliTest.fieldNames(r.out().strip());
        assertEquals(List.of("bench", "params", "seq", "batch", "tokens_per_s", "ms_per_step", "fwd_ms", "bwd_ms", "opt_ms", "impl",
                "active_params", "peak_mb"), fields.subList(0, 12));
        assertEquals(MOE_METRICS, fields.subList(12, fields.size()));
        // 2 layers of 4 experts, 2·64·256 weights each: 3 of them idle per token.
        assertEquals(2L * 3 * 2 * 64 * 256, row.get("params").asLong() - row.get("active_params").asLong(), r.out());
        CliRun.assertUsageError("--set overrides keys of a config: give it with --preset", "bench", "train", "--set", "n_layer=1");
        CliRun.assertUsageError("channel_mixer.k", "bench", "train", "--preset", "tiny", "--set", "channel_mixer=moe", "--set",
                "channel_mixer.k=9");
    }

    @Test
    void benchRecallRunsMoeLayers() throws Exception {
        CliRun r = CliRun.of("bench", "recall", "--channel-mixer", "moe", "--experts", "4", "--top-k", "2", "--steps", "2", "--batch",
                "2", "--d-model", "16", "--threads", "1", "--json");
        JsonNode row = r.rows(null).get(0);
        List<String> fields = CliTest.fieldNames(r.out().strip());
        assertEquals(List.of("bench", "task", "mixer", "steps", "accuracy", "params", "active_params"), fields.subList(0, 7));
        assertEquals(MOE_METRICS, fields.subList(7, fields.size()));
        assertEquals(2L * 2 * 2 * 16 * 64, row.get("params").asLong() - row.get("active_params").asLong(), r.out());
        JsonNode mlp = CliRun.of("bench", "recall", "--steps", "1", "--batch", "2", "--d-model", "16", "--threads", "1",
                "--json").rows(null).get(0);
        assertEquals(mlp.get("params").asLong(), mlp.get("active_params").asLong());
        CliRun.assertUsageError("--channel-mixer \"glu\" is not mlp or moe", "bench", "recall", "--channel-mixer", "glu");
        CliRun.assertUsageError("--experts applies only with --channel-mixer moe", "bench", "recall", "--experts", "4");
        CliRun.assertUsageError("--top-k 5 exceeds --experts 4", "bench", "recall", "--channel-mixer", "moe", "--experts", "4", "--top-k", "5");
        CliRun.assertUsageError("k = 9 exceeds experts = 8", "bench", "recall", "--channel-mixer", "moe", "--top-k", "9");
    }

    @Test
    void moeSmallPresetIsSmallWithMixturesInEveryOtherLayer() throws Exception {
        ModelConfig small = ModelConfig.load(Presets.resolve("small"));
        ModelConfig moe = ModelConfig.load(Presets.resolve("moe-small"));
        assertEquals(small.withChannelMixers(moe.channelMixers()), moe, "only the channel mixers differ from small");
        MoeSpec expected = new MoeSpec(8, 4 * small.dModel(), 1, 0, 0.01, 0.001, 0);
        for (int l = 0; l < moe.nLayer(); l++) {
            assertEquals(l % 2 == 0 ? new MlpSpec(small.mlpRatio()) : expected, moe.channelMixers().get(l), "layer " + l);
        }
        assertEquals(RunConfig.load(Presets.resolve("small")).train(), RunConfig.load(Presets.resolve("moe-small")).train());
        long idle = moe.channelMixers().stream().mapToLong(c -> c.inactiveParameters(moe.dModel())).sum();
        assertEquals(3L * 7 * 2 * 1280 * 320, idle, "7 of 8 experts idle per token in 3 layers");
    }
}
