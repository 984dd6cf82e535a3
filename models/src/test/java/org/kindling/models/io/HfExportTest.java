package org.kindling.models.io;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.kindling.models.Gpt;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.data.TokenBatch;
import org.kindling.ops.Device;
import org.kindling.ops.cpu.CpuDevice;

/**
 * The export is checked by running GPT-2 exactly as transformers' modeling_gpt2 does — Conv1D
 * (y = x·W + b with W stored [in, out]), the fused c_attn split into q, k, v, gelu_new, the head
 * tied to wte — in double precision from the exported file alone, and comparing its logits to ours.
 */
class HfExportTest {
    private static final ModelConfig CFG = ModelConfig.gpt(23, 16, 2, 2, 2, 32, 4, 0, 0.2, 1e-5);

    @TempDir
    Path dir;

    @Test
    void transformersLayoutReproducesOurLogits() throws Exception {
        int[] tokens = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2};
        float[] ours;
        try (Device dev = CpuDevice.open(1); Gpt model = new Gpt(CFG, dev, 11)) {
            // Give LayerNorms and biases non-trivial values, so a mislaid one shows.
            float[] w = model.params().values().toFloatArray();
            java.util.SplittableRandom r = new java.util.SplittableRandom(2);
            for (int i = model.params().segments().get(0).length(); i < w.length; i++) {
                w[i] += (float) (r.nextDouble() - 0.5) * 0.4f;
            }
            model.params().values().copyFrom(w);
            ours = model.logits(TokenBatch.single(tokens)).toFloatArray();
            HfExport.write(model, 22, dir);
        }
        Map<String, Safetensors.Tensor> t;
        try (InputStream in = Files.newInputStream(dir.resolve("model.safetensors"))) {
            t = Safetensors.read(in, "model.safetensors").tensors();
        }
        assertArrayEquals(new int[] {16, 48}, t.get("transformer.h.0.attn.c_attn.weight").shape());
        assertArrayEquals(new int[] {16, 64}, t.get("transformer.h.1.mlp.c_fc.weight").shape());
        assertArrayEquals(new int[] {64, 16}, t.get("transformer.h.1.mlp.c_proj.weight").shape());
        assertEquals(4 + 12 * 2, t.size(), "wte, wpe, ln_f weight and bias, and 12 tensors per layer");
        double[] theirs = gpt2Forward(t, tokens);
        for (int i = 0; i < ours.length; i++) {
            assertEquals(theirs[i], ours[i], 1e-4 * (1 + Math.abs(theirs[i])), "logit " + i);
        }
        JsonNode config = new ObjectMapper().readTree(dir.resolve("config.json").toFile());
        assertEquals("gpt2", config.get("model_type").asText());
        assertEquals("GPT2LMHeadModel", config.get("architectures").get(0).asText());
        assertEquals(23, config.get("vocab_size").asInt());
        assertEquals(32, config.get("n_positions").asInt());
        assertEquals(16, config.get("n_embd").asInt());
        assertEquals(2, config.get("n_layer").asInt());
        assertEquals(2, config.get("n_head").asInt());
        assertEquals("gelu_new", config.get("activation_function").asText());
        assertEquals(22, config.get("eos_token_id").asInt());
        assertTrue(config.get("tie_word_embeddings").asBoolean());
    }

    @Test
    void refusesArchitecturesGpt2CannotHold() {
        ModelConfig gqa = ModelConfig.gpt(23, 16, 1, 2, 1, 32, 4, 0, 0.2, 1e-5);
        try (Device dev = CpuDevice.open(1); Gpt model = new Gpt(gqa, dev, 1)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> HfExport.write(model, 0, dir));
            assertTrue(e.getMessage().contains("grouped-query attention"), e.getMessage());
        }
        ModelConfig unlearned = ModelConfig.gpt(23, 16, 1, 2, 2, 32, 4, 0, 0.2, 1e-5).withPositions(ModelConfig.PosEmb.NONE, 0);
        try (Device dev = CpuDevice.open(1); Gpt model = new Gpt(unlearned, dev, 1)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> HfExport.write(model, 0, dir));
            assertTrue(e.getMessage().contains("pos_emb is none"), e.getMessage());
        }
        ModelConfig base = ModelConfig.gpt(23, 16, 1, 2, 2, 32, 4, 0, 0.2, 1e-5);
        ModelConfig butterfly = base.withChannelMixers(java.util.List.of(new org.kindling.models.channel.MlpSpec(4, true,
                new org.kindling.models.nn.LinearSpec(org.kindling.models.nn.LinearSpec.Kind.BUTTERFLY, 32, 16, 2, 32, false))));
        try (Device dev = CpuDevice.open(1); Gpt model = new Gpt(butterfly, dev, 1)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> HfExport.write(model, 0, dir));
            assertTrue(e.getMessage().contains("butterfly projections"), e.getMessage());
        }
        ModelConfig masked = base.withMixers(java.util.List.of(new org.kindling.models.mixers.attention.AttentionSpec(2, 2,
                org.kindling.models.nn.LinearSpec.DENSE, org.kindling.models.mixers.attention.AttentionSpec.Mask.FLAT_BUTTERFLY, 128, 2)));
        try (Device dev = CpuDevice.open(1); Gpt model = new Gpt(masked, dev, 1)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> HfExport.write(model, 0, dir));
            assertTrue(e.getMessage().contains("layer 0's attention has mask flat_butterfly"), e.getMessage());
        }
        ModelConfig sparse = base.withChannelMixers(java.util.List.of(new org.kindling.models.channel.SparseFfnSpec(64)));
        try (Device dev = CpuDevice.open(1); Gpt model = new Gpt(sparse, dev, 1)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> HfExport.write(model, 0, dir));
            assertTrue(e.getMessage().contains("sparse_ffn") && e.getMessage().contains("attention + mlp layers only"), e.getMessage());
        }
    }

    private static double[] get(Map<String, Safetensors.Tensor> t, String name) {
        float[] f = t.get(name).data();
        double[] d = new double[f.length];
        for (int i = 0; i < f.length; i++) {
            d[i] = f[i];
        }
        return d;
    }

    /** Conv1D: x[T, in]·w[in, out] + b. */
    private static double[] conv1d(double[] x, int rows, double[] w, double[] b, int in, int out) {
        double[] y = new double[rows * out];
        for (int r = 0; r < rows; r++) {
            for (int o = 0; o < out; o++) {
                double s = b[o];
                for (int i = 0; i < in; i++) {
                    s += x[r * in + i] * w[i * out + o];
                }
                y[r * out + o] = s;
            }
        }
        return y;
    }

    private static double[] layerNorm(double[] x, int rows, int c, double[] g, double[] b) {
        double[] y = new double[x.length];
        for (int r = 0; r < rows; r++) {
            double mean = 0;
            for (int i = 0; i < c; i++) {
                mean += x[r * c + i] / c;
            }
            double var = 0;
            for (int i = 0; i < c; i++) {
                var += (x[r * c + i] - mean) * (x[r * c + i] - mean) / c;
            }
            for (int i = 0; i < c; i++) {
                y[r * c + i] = (x[r * c + i] - mean) / Math.sqrt(var + 1e-5) * g[i] + b[i];
            }
        }
        return y;
    }

    private static double[] gpt2Forward(Map<String, Safetensors.Tensor> t, int[] tokens) {
        int n = tokens.length;
        int c = 16;
        int nh = 2;
        int hs = c / nh;
        double[] wte = get(t, "transformer.wte.weight");
        double[] wpe = get(t, "transformer.wpe.weight");
        double[] h = new double[n * c];
        for (int i = 0; i < n; i++) {
            for (int j = 0; j < c; j++) {
                h[i * c + j] = wte[tokens[i] * c + j] + wpe[i * c + j];
            }
        }
        for (int l = 0; l < 2; l++) {
            String p = "transformer.h." + l;
            double[] a = layerNorm(h, n, c, get(t, p + ".ln_1.weight"), get(t, p + ".ln_1.bias"));
            double[] qkv = conv1d(a, n, get(t, p + ".attn.c_attn.weight"), get(t, p + ".attn.c_attn.bias"), c, 3 * c);
            double[] att = new double[n * c];
            for (int head = 0; head < nh; head++) {
                for (int i = 0; i < n; i++) {
                    double[] s = new double[i + 1];
                    double max = Double.NEGATIVE_INFINITY;
                    for (int j = 0; j <= i; j++) {
                        double dot = 0;
                        for (int d = 0; d < hs; d++) {
                            dot += qkv[i * 3 * c + head * hs + d] * qkv[j * 3 * c + c + head * hs + d];
                        }
                        s[j] = dot / Math.sqrt(hs);
                        max = Math.max(max, s[j]);
                    }
                    double sum = 0;
                    for (int j = 0; j <= i; j++) {
                        s[j] = Math.exp(s[j] - max);
                        sum += s[j];
                    }
                    for (int j = 0; j <= i; j++) {
                        for (int d = 0; d < hs; d++) {
                            att[i * c + head * hs + d] += s[j] / sum * qkv[j * 3 * c + 2 * c + head * hs + d];
                        }
                    }
                }
            }
            double[] proj = conv1d(att, n, get(t, p + ".attn.c_proj.weight"), get(t, p + ".attn.c_proj.bias"), c, c);
            for (int i = 0; i < h.length; i++) {
                h[i] += proj[i];
            }
            double[] m = layerNorm(h, n, c, get(t, p + ".ln_2.weight"), get(t, p + ".ln_2.bias"));
            double[] fc = conv1d(m, n, get(t, p + ".mlp.c_fc.weight"), get(t, p + ".mlp.c_fc.bias"), c, 4 * c);
            for (int i = 0; i < fc.length; i++) {
                double x = fc[i];
                fc[i] = 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));
            }
            double[] out = conv1d(fc, n, get(t, p + ".mlp.c_proj.weight"), get(t, p + ".mlp.c_proj.bias"), 4 * c, c);
            for (int i = 0; i < h.length; i++) {
                h[i] += out[i];
            }
        }
        double[] hf = layerNorm(h, n, c, get(t, "transformer.ln_f.weight"), get(t, "transformer.ln_f.bias"));
        double[] logits = new double[n * 23];
        for (int i = 0; i < n; i++) {
            for (int v = 0; v < 23; v++) {
                double s = 0;
                for (int j = 0; j < c; j++) {
                    s += hf[i * c + j] * wte[v * c + j];
                }
                logits[i * 23 + v] = s;
            }
        }
        return logits;
    }
}
