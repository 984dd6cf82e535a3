package org.kindling.models.io;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import org.kindling.models.Gpt;
import org.kindling.models.channel.ChannelSpec;
import org.kindling.models.channel.MlpSpec;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.mixers.MixerSpec;
import org.kindling.models.mixers.attention.AttentionSpec;
import org.kindling.models.nn.Param;
import org.kindling.models.nn.Params;

/**
 * Writes a model of the GPT-2 architecture in the layout of Hugging Face transformers'
 * {@code GPT2LMHeadModel}: {@code model.safetensors} with GPT-2's parameter names and its Conv1D
 * layout (weights stored [in, out], q/k/v fused into {@code c_attn}), and a {@code config.json}.
 * The LM head is tied to {@code transformer.wte.weight}, as GPT-2's is.
 */
public final class HfExport {
    private HfExport() {
    }

    /** Checks that the model is exactly GPT-2's architecture; names the first difference. */
    public static void requireGpt2(ModelConfig cfg) {
        if (cfg.deq() != null) {
            throw new IllegalArgumentException("deq: a deep equilibrium model solves one block to its fixed point; the GPT-2 "
                    + "format holds a stack of blocks each applied once");
        }
        if (cfg.posEmb() != ModelConfig.PosEmb.LEARNED) {
            throw new IllegalArgumentException("pos_emb is " + cfg.posEmb().name().toLowerCase()
                    + "; the GPT-2 format needs learned position embeddings");
        }
        for (int l = 0; l < cfg.nLayer(); l++) {
            MixerSpec m = cfg.mixers().get(l);
            ChannelSpec ch = cfg.channelMixers().get(l);
            if (!(m instanceof AttentionSpec a) || !(ch instanceof MlpSpec mlp)) {
                throw new IllegalArgumentException("layer " + l + " uses " + m.type() + " + " + ch.type()
                        + "; the GPT-2 format holds attention + mlp layers only");
            }
            if (!mlp.bias()) {
                throw new IllegalArgumentException("layer " + l + "'s mlp has no biases; GPT-2's MLP has them");
            }
            if (!a.linear().dense()) {
                throw new IllegalArgumentException("layer " + l + "'s attention has " + a.linear().kind().key()
                        + " projections; GPT-2 has dense ones, and export does not densify them");
            }
            if (a.mask() != AttentionSpec.Mask.DENSE) {
                throw new IllegalArgumentException("layer " + l + "'s attention has mask " + a.mask().key()
                        + "; GPT-2 attends to every earlier token, so a masked model is not GPT-2");
            }
            if (a.qkv().multiplicative()) {
                throw new IllegalArgumentException("layer " + l + "'s attention has qkv: multiplicative (a multiplicative layer and"
                        + " convolutions); GPT-2 has dense q, k, v projections, and export does not convert them");
            }
            if (!mlp.linear().dense()) {
                throw new IllegalArgumentException("layer " + l + "'s mlp has " + mlp.linear().kind().key()
                        + " projections; GPT-2 has dense ones, and export does not densify them");
            }
            if (a.kvHeads() != a.heads()) {
                throw new IllegalArgumentException("layer " + l + " has " + a.kvHeads() + " key/value heads for " + a.heads()
                        + " query heads; GPT-2 has no grouped-query attention");
            }
            if (!a.equals(cfg.mixers().get(0)) || !mlp.equals(cfg.channelMixers().get(0))) {
                throw new IllegalArgumentException("layer " + l + " differs from layer 0 (" + a.toMap() + ", " + mlp.toMap()
                        + " against " + cfg.mixers().get(0).toMap() + ", " + cfg.channelMixers().get(0).toMap()
                        + "); GPT-2's layers are all alike");
            }
        }
    }

    /** The tensors of {@code model.safetensors}, by GPT-2 name. */
    static Map<String, Safetensors.Tensor> tensors(Gpt model) {
        ModelConfig cfg = model.config();
        requireGpt2(cfg);
        Params p = model.params();
        int c = cfg.dModel();
        Map<String, Safetensors.Tensor> out = new LinkedHashMap<>();
        out.put("transformer.wte.weight", same(p, "wte.weight"));
        out.put("transformer.wpe.weight", same(p, "wpe.weight"));
        for (int l = 0; l < cfg.nLayer(); l++) {
            String ours = "h." + l;
            String hf = "transformer.h." + l;
            out.put(hf + ".ln_1.weight", same(p, ours + ".ln_1.weight"));
            out.put(hf + ".ln_1.bias", same(p, ours + ".ln_1.bias"));
            float[] qkv = new float[c * 3 * c];
            float[] qkvBias = new float[3 * c];
            int part = 0;
            for (String proj : new String[] {"q", "k", "v"}) {
                float[] w = p.get(ours + ".attn." + proj + ".weight").value().toFloatArray(); // [C_out, C_in]
                for (int o = 0; o < c; o++) {
                    for (int i = 0; i < c; i++) {
                        qkv[i * 3 * c + part * c + o] = w[o * c + i];
                    }
                }
                System.arraycopy(p.get(ours + ".attn." + proj + ".bias").value().toFloatArray(), 0, qkvBias, part * c, c);
                part++;
            }
            out.put(hf + ".attn.c_attn.weight", new Safetensors.Tensor(new int[] {c, 3 * c}, qkv));
            out.put(hf + ".attn.c_attn.bias", new Safetensors.Tensor(new int[] {3 * c}, qkvBias));
            out.put(hf + ".attn.c_proj.weight", transposed(p, ours + ".attn.proj.weight"));
            out.put(hf + ".attn.c_proj.bias", same(p, ours + ".attn.proj.bias"));
            out.put(hf + ".ln_2.weight", same(p, ours + ".ln_2.weight"));
            out.put(hf + ".ln_2.bias", same(p, ours + ".ln_2.bias"));
            out.put(hf + ".mlp.c_fc.weight", transposed(p, ours + ".mlp.fc.weight"));
            out.put(hf + ".mlp.c_fc.bias", same(p, ours + ".mlp.fc.bias"));
            out.put(hf + ".mlp.c_proj.weight", transposed(p, ours + ".mlp.proj.weight"));
            out.put(hf + ".mlp.c_proj.bias", same(p, ours + ".mlp.proj.bias"));
        }
        out.put("transformer.ln_f.weight", same(p, "ln_f.weight"));
        out.put("transformer.ln_f.bias", same(p, "ln_f.bias"));
        return out;
    }

    private static Safetensors.Tensor same(Params p, String name) {
        Param param = p.get(name);
        return new Safetensors.Tensor(param.shape(), param.value().toFloatArray());
    }

    /** Our Linear weight [out, in] as GPT-2's Conv1D weight [in, out]. */
    private static Safetensors.Tensor transposed(Params p, String name) {
        Param param = p.get(name);
        int rows = param.shape()[0];
        int cols = param.shape()[1];
        float[] w = param.value().toFloatArray();
        float[] t = new float[w.length];
        for (int r = 0; r < rows; r++) {
            for (int c = 0; c < cols; c++) {
                t[c * rows + r] = w[r * cols + c];
            }
        }
        return new Safetensors.Tensor(new int[] {cols, rows}, t);
    }

    /** GPT-2's config.json for this model; {@code endOfText} becomes the bos and eos token id. */
    static ObjectNode config(ModelConfig cfg, int endOfText) {
        ObjectNode n = new ObjectMapper().createObjectNode();
        n.putArray("architectures").add("GPT2LMHeadModel");
        n.put("model_type", "gpt2");
        n.put("vocab_size", cfg.vocab());
        n.put("n_positions", cfg.maxSeq());
        n.put("n_ctx", cfg.maxSeq());
        n.put("n_embd", cfg.dModel());
        n.put("n_layer", cfg.nLayer());
        n.put("n_head", ((AttentionSpec) cfg.mixers().get(0)).heads());
        n.put("n_inner", ((MlpSpec) cfg.channelMixers().get(0)).ratio() * cfg.dModel());
        n.put("activation_function", "gelu_new");
        n.put("resid_pdrop", cfg.dropout());
        n.put("embd_pdrop", cfg.dropout());
        n.put("attn_pdrop", 0.0);
        n.put("layer_norm_epsilon", cfg.layerNormEps());
        n.put("initializer_range", cfg.initStd());
        n.put("bos_token_id", endOfText);
        n.put("eos_token_id", endOfText);
        n.put("tie_word_embeddings", true);
        n.put("torch_dtype", "float32");
        return n;
    }

    /** Writes {@code model.safetensors} and {@code config.json} into {@code dir}. */
    public static void write(Gpt model, int endOfText, Path dir) throws IOException {
        requireGpt2(model.config());
        Files.createDirectories(dir);
        try (OutputStream out = Files.newOutputStream(dir.resolve("model.safetensors"))) {
            Safetensors.write(out, tensors(model), Map.of("format", "pt"));
        }
        new ObjectMapper().writerWithDefaultPrettyPrinter().writeValue(dir.resolve("config.json").toFile(),
                config(model.config(), endOfText));
    }
}
