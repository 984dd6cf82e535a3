package org.kindling.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;
import org.kindling.models.mixers.Mixers;

/** The mixer benches of issue 11 at tiny sizes: their JSON rows, stderr reports and option checks. */
class MixerBenchTest {

    @Test
    void mixersMeasuresEveryRegisteredMixerAtEveryLengthBaselineFirst() throws Exception {
        CliRun r = CliRun.of("bench", "mixers", "--seq", "16,40", "--d-model", "16", "--heads", "2", "--reps", "1", "--threads", "1",
                "--json");
        List<JsonNode> rows = r.rows(List.of("bench", "mixer", "seq", "fwd_bwd_ms", "extra_bytes"));
        int types = Mixers.types().size();
        assertEquals(2 * types, rows.size(), r.out());
        long[] attentionExtra = new long[2];
        for (int i = 0; i < rows.size(); i++) {
            JsonNode row = rows.get(i);
            assertEquals("mixers", row.get("bench").asText());
            assertEquals(i < types ? 16 : 40, row.get("seq").asInt());
            assertTrue(row.get("fwd_bwd_ms").asDouble() > 0, row.toString());
            assertTrue(row.get("extra_bytes").asLong() > 0, "the layer's activations count as extra: " + row);
            if (i % types == 0) {
                assertEquals("attention", row.get("mixer").asText(), "the baseline comes first at every length");
                attentionExtra[i / types] = row.get("extra_bytes").asLong();
            }
        }
        List<String> measured = rows.subList(0, types).stream().map(n -> n.get("mixer").asText()).sorted().toList();
        assertEquals(List.copyOf(Mixers.types()), measured);
        assertTrue(attentionExtra[1] > attentionExtra[0], "activations grow with T: " + r.out());
        for (String m : Mixers.types()) {
            if (!m.equals("attention")) {
                assertTrue(r.err().contains("crossover " + m + ": "), r.err());
            }
        }
        assertTrue(r.err().contains("T=40") && r.err().contains(" ms"), r.err());
    }

    @Test
    void mixersChecksItsOptions() throws Exception {
        List<JsonNode> only = CliRun.of("bench", "mixers", "--mixer", "attention", "--seq", "8", "--d-model", "8", "--heads", "2",
                "--reps", "1", "--threads", "1", "--json").rows(List.of("bench", "mixer", "seq", "fwd_bwd_ms", "extra_bytes"));
        assertEquals(1, only.size());
        CliRun.assertUsageError("--mixer \"rnn\" is not a registered token mixer; known: attention", "bench", "mixers", "--mixer", "rnn");
        CliRun.assertUsageError("--seq must be at least 1, got 0", "bench", "mixers", "--seq", "64,0");
        CliRun.assertUsageError("--seq lists 64 twice", "bench", "mixers", "--seq", "64,64");
        CliRun.assertUsageError("--seq 1500000000 × --batch 1 × --d-model 2 exceeds", "bench", "mixers", "--seq", "1500000000", "--d-model",
                "2", "--mixer", "attention", "--heads", "1");
        CliRun.assertUsageError("heads", "bench", "mixers", "--d-model", "10", "--heads", "4");
        CliRun.assertUsageError("--reps must be at least 1", "bench", "mixers", "--reps", "0");
    }

    @Test
    void decodeMeasuresEverySparseFfnAndQkvPairBesideDenseOnes() throws Exception {
        CliRun r = CliRun.of("bench", "decode", "--ffn", "sparse", "--qkv", "multiplicative,dense", "--context", "20", "--tokens", "2",
                "--d-model", "16", "--heads", "2", "--layers", "1", "--threads", "1", "--json");
        List<JsonNode> rows = r.rows(List.of("bench", "mixer", "ffn", "qkv", "context", "tokens_per_s"));
        List<String> pairs = rows.stream().map(row -> row.get("mixer").asText() + " " + row.get("ffn").asText() + " "
                + row.get("qkv").asText()).toList();
        // Dense first in both lists, whether named or not: the baseline of the ratios.
        assertEquals(List.of("attention dense dense", "attention dense multiplicative", "attention sparse dense",
                "attention sparse multiplicative"), pairs, r.out());
        assertTrue(r.err().contains("(attention ffn dense qkv dense "), r.err());
        CliRun.assertUsageError("--ffn \"moe\" is unknown; known: dense, sparse", "bench", "decode", "--ffn", "moe");
        CliRun.assertUsageError("--qkv names \"dense\" twice", "bench", "decode", "--qkv", "dense,dense");
    }

    @Test
    void decodeReportsTokensPerSecondAndAttentionsGrowingState() throws Exception {
        // The KV cache grows by doubling from 64 rows: 62 + 3 tokens and 200 + 3 both pass a capacity.
        CliRun r = CliRun.of("bench", "decode", "--context", "62,200", "--tokens", "3", "--d-model", "16", "--heads", "2", "--layers",
                "1", "--threads", "1", "--json");
        List<JsonNode> rows = r.rows(List.of("bench", "mixer", "ffn", "qkv", "context", "tokens_per_s"));
        int types = Mixers.types().size();
        assertEquals(2 * types, rows.size(), r.out());
        for (int i = 0; i < rows.size(); i++) {
            JsonNode row = rows.get(i);
            assertEquals("decode", row.get("bench").asText());
            assertEquals(i < types ? 62 : 200, row.get("context").asInt());
            assertTrue(row.get("tokens_per_s").asDouble() > 0, row.toString());
        }
        assertEquals("attention", rows.get(types).get("mixer").asText());
        Matcher m = Pattern.compile("context (\\d+) +attention .* state (\\d+) → (\\d+) bytes").matcher(r.err());
        List<long[]> states = new ArrayList<>();
        while (m.find()) {
            states.add(new long[] {Long.parseLong(m.group(2)), Long.parseLong(m.group(3))});
        }
        assertEquals(2, states.size(), r.err());
        assertTrue(states.get(0)[1] > states.get(0)[0], "the KV cache grows while decoding: " + r.err());
        assertTrue(states.get(1)[0] > states.get(0)[0], "and with the context: " + r.err());
    }

    @Test
    void decodeChecksItsOptions() {
        CliRun.assertUsageError("--context must be at least 1, got 0", "bench", "decode", "--context", "0");
        CliRun.assertUsageError("--tokens must be at least 1, got 0", "bench", "decode", "--tokens", "0");
        CliRun.assertUsageError("--layers must be at least 1, got 0", "bench", "decode", "--layers", "0");
        CliRun.assertUsageError("--mixer \"lstm\" is not a registered token mixer", "bench", "decode", "--mixer", "attention,lstm");
        CliRun.assertUsageError("--mixer names \"attention\" twice", "bench", "decode", "--mixer", "attention,attention");
    }

    @Test
    void recallRunsTheHybridOnlyWhenH3IsRegistered() throws Exception {
        if (Mixers.types().contains("h3")) {
            List<JsonNode> rows = CliRun.of("bench", "recall", "--mixer", "hybrid", "--steps", "1", "--batch", "2", "--d-model",
                    "16", "--threads", "1", "--json").rows(List.of("bench", "task", "mixer", "steps", "accuracy", "params",
                    "active_params"));
            assertEquals("hybrid", rows.get(0).get("mixer").asText());
        } else {
            CliRun.assertUsageError("--mixer hybrid needs the h3 token mixer, which this build does not register", "bench", "recall",
                    "--mixer", "hybrid");
        }
        CliRun help = CliRun.of("bench", "recall", "--help");
        // Help wraps its lines: compare with the whitespace folded.
        assertTrue(help.out().replaceAll("\\s+", " ").contains(String.join(", ", Mixers.types()) + ", or hybrid"), help.out());
    }

    @Test
    void recallTrainsOneRowPerKernel() throws Exception {
        List<JsonNode> rows = CliRun.of("bench", "recall", "--mixer", "kernelized", "--kernel", "gmm-prf,rks,fastfood-rks,generator-prf", "--steps", "2",
                "--batch", "2", "--d-model", "16", "--threads", "1", "--json").rows(List.of("bench", "task", "mixer", "kernel",
                "steps", "accuracy", "params", "active_params"));
        assertEquals(List.of("gmm-prf", "rks", "fastfood-rks", "generator-prf"), rows.stream().map(n -> n.get("kernel").asText()).toList());
        for (JsonNode row : rows) {
            assertEquals("kernelized", row.get("mixer").asText());
            assertEquals(2, row.get("steps").asInt());
        }
        assertTrue(rows.get(0).get("params").asLong() > rows.get(1).get("params").asLong(),
                "the mixture's μ, σ and π are parameters, rks's noise is not: " + rows);
        for (int i = 2; i < 4; i++) {
            assertTrue(rows.get(i).get("params").asLong() > rows.get(1).get("params").asLong(),
                    "FastFood's G and S and the generator's weights are parameters: " + rows);
        }
        CliRun.assertUsageError("--kernel applies only with --mixer kernelized", "bench", "recall", "--kernel", "rks");
        CliRun.assertUsageError("--kernel \"gauss\" is not a kernel; known: gmm-rks, gmm-prf, rks, prf, fastfood-rks, "
                + "fastfood-prf, generator-rks, generator-prf", "bench", "recall",
                "--mixer", "kernelized", "--kernel", "rks,gauss");
        CliRun.assertUsageError("--kernel names \"rks\" twice", "bench", "recall", "--mixer", "kernelized", "--kernel", "rks,rks");
    }

    /** --mixer-set configures the mixer as the YAML would: skein sketching 4 of the 16 keys, its errors naming the key. */
    @Test
    void recallSetsKeysOfTheMixerSpec() throws Exception {
        CliRun r = CliRun.of("bench", "recall", "--mixer", "skein", "--mixer-set", "samples=4", "--mixer-set", "pilot=4",
                "--mixer-set", "causal=false", "--seq", "16", "--steps", "2", "--batch", "2", "--d-model", "16", "--threads", "1",
                "--json");
        assertEquals("skein", r.rows(null).get(0).get("mixer").asText());
        assertTrue(r.err().contains("skein {samples=4, pilot=4, causal=false}"), r.err());
        CliRun.assertUsageError("unknown key mixer.sample", "bench", "recall", "--mixer", "skein", "--mixer-set", "sample=4");
        CliRun.assertUsageError("--mixer-set does not combine with --kernel", "bench", "recall", "--mixer", "kernelized",
                "--kernel", "rks", "--mixer-set", "features=8");
    }

    @Test
    void theMixerBenchesHaveHelpListingTheRegisteredMixers() {
        for (String bench : List.of("mixers", "decode")) {
            CliRun r = CliRun.of("bench", bench, "--help");
            assertEquals(0, r.code(), bench);
            assertTrue(r.out().replaceAll("\\s+", " ").contains("every registered one: " + String.join(", ", Mixers.types())), r.out());
        }
    }
}
