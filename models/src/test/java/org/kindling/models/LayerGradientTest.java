package org.kindling.models;

import java.util.List;
import java.util.Map;
import java.util.function.BiConsumer;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.kindling.models.channel.ChannelMixer;
import org.kindling.models.channel.MlpSpec;
import org.kindling.models.channel.MoeSpec;
import org.kindling.models.channel.SparseFfnSpec;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.mixers.MixerSpec;
import org.kindling.models.mixers.TokenMixer;
import org.kindling.models.mixers.attention.AttentionSpec;
import org.kindling.models.mixers.linear.LinearAttentionSpec;
import org.kindling.models.mixers.linear.PerformerSpec;
import org.kindling.models.mixers.skein.SkeinSpec;
import org.kindling.models.mixers.ssm.H3Spec;
import org.kindling.models.mixers.ssm.S4dSpec;
import org.kindling.models.nn.Activations;
import org.kindling.models.nn.LayerContext;
import org.kindling.models.nn.LayerNorm;
import org.kindling.models.nn.Linear;
import org.kindling.models.nn.LinearSpec;
import org.kindling.models.nn.Params;
import org.kindling.models.nn.Seqs;
import org.kindling.models.nn.StepContext;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;

/**
 * Double-precision finite-difference gradient checks of every layer on the fp64 reference
 * device, on packed batches of awkward lengths, every entry of the input and of every parameter
 * (see {@link GradCheck} for the tolerance).
 */
class LayerGradientTest {
    private final ReferenceTensors ref = new ReferenceTensors();
    private final Device dev = ref.dev;

    @AfterEach
    void tearDown() throws Exception {
        ref.close();
    }

    private <T extends AutoCloseable> T keep(T t) {
        return ref.keep(t);
    }

    private Tensor input(long seed, int t, int c) {
        return ref.input(seed, t, c);
    }

    private Params params(Params.Builder pb, long seed, double scale) {
        return ref.params(pb, seed, scale);
    }

    private static List<GradCheck.Probe> probes(Params params, Tensor x, Tensor dx) {
        return ReferenceTensors.probes(params, x, dx);
    }

    private void check(String what, Params params, Tensor x, Tensor y, Runnable forward, BiConsumer<Tensor, Tensor> backward) {
        ref.check(what, params, x, y, forward, backward);
    }

    @Test
    void linear() {
        Params.Builder pb = new Params.Builder();
        Linear lin = new Linear(pb, "lin", 7, 5, true, 0.5);
        Params params = params(pb, 1, 0.5);
        Tensor x = input(2, 9, 7);
        Tensor y = keep(dev.allocate(DType.F32, 9, 5));
        check("linear", params, x, y, () -> lin.forward(y, x), lin::backward);
    }

    @Test
    void linearWithoutBiasOverwritingItsInputGradient() {
        Params.Builder pb = new Params.Builder();
        Linear lin = new Linear(pb, "lin", 6, 3, false, 0.5);
        Params params = params(pb, 3, 0.5);
        Tensor x = input(4, 5, 6);
        Tensor y = keep(dev.allocate(DType.F32, 5, 3));
        check("linear without bias", params, x, y, () -> lin.forward(y, x), lin::backwardOverwrite);
    }

    @Test
    void layerNorm() {
        Params.Builder pb = new Params.Builder();
        LayerNorm ln = keep(new LayerNorm(pb, dev, "ln", 11, 1e-5));
        Params params = params(pb, 3, 1.0);
        Tensor x = input(5, 6, 11);
        Tensor y = keep(dev.allocate(DType.F32, 6, 11));
        check("layer norm", params, x, y, () -> ln.forward(y, x), ln::backward);
    }

    @Test
    void mlp() {
        Params.Builder pb = new Params.Builder();
        ChannelMixer mlp = keep(new MlpSpec(4).build(context(pb, "mlp", 6)));
        Params params = params(pb, 6, 0.6);
        Tensor x = input(7, 5, 6);
        Tensor y = keep(dev.allocate(DType.F32, 5, 6));
        check("mlp", params, x, y, () -> mlp.forward(y, x), mlp::backward);
    }

    @Test
    void pixelflyAndButterflyMlps() {
        for (LinearSpec.Kind kind : new LinearSpec.Kind[] {LinearSpec.Kind.PIXELFLY, LinearSpec.Kind.BUTTERFLY}) {
            Params.Builder pb = new Params.Builder();
            ChannelMixer mlp = keep(new MlpSpec(2, true, new LinearSpec(kind, 4, 2, 1, 2, true)).build(context(pb, "mlp", 8)));
            Params params = params(pb, 21, 0.6);
            Tensor x = input(22, 5, 8);
            Tensor y = keep(dev.allocate(DType.F32, 5, 8));
            check(kind.key() + " mlp", params, x, y, () -> mlp.forward(y, x), mlp::backward);
            // Decoding's forward gives the same output and leaves the pending backward's state alone.
            Tensor step = keep(dev.allocate(DType.F32, 5, 8));
            mlp.forward(y, x);
            Tensor other = input(23, 5, 8);
            mlp.forwardStep(step, other);
            mlp.forwardStep(step, x);
            org.junit.jupiter.api.Assertions.assertArrayEquals(y.toDoubleArray(), step.toDoubleArray(), 0.0, kind.key());
        }
    }

    @Test
    void attentionWithPixelflyAndButterflyProjections() {
        checkMixer("attention with pixelfly projections", new AttentionSpec(2, 2, new LinearSpec(LinearSpec.Kind.PIXELFLY, 4, 2, 1, 2, true)),
                8, 31, 3, 4);
        checkMixer("attention with butterfly projections", new AttentionSpec(2, 1, new LinearSpec(LinearSpec.Kind.BUTTERFLY, 32, 16, 2, 32, false)),
                8, 33, 3, 4);
    }

    @Test
    void attentionWithMultiplicativeQkv() {
        checkMixer("attention with multiplicative qkv", new AttentionSpec(2, 2, LinearSpec.DENSE,
                new org.kindling.models.mixers.attention.QkvSpec(true, 4, 3, 2)), 8, 35, 1, 6, 3);
    }

    /**
     * A mixture of experts, its auxiliary losses in the objective: L = Σ w·y + balance loss + z-loss.
     * Routing (argmax choices, capacity drops) is piecewise constant, so the probes stay off its edges.
     */
    private void checkMoe(String what, MoeSpec spec, int t, long seed) {
        Params.Builder pb = new Params.Builder();
        StepContext step = keep(new StepContext());
        ChannelMixer moe = keep(spec.build(new LayerContext(pb, dev, "moe", 6, 0, 2, 0.3, 5, step)));
        Params params = params(pb, seed, 0.8);
        Tensor x = input(seed + 2, t, 6);
        Tensor y = keep(dev.allocate(DType.F32, t, 6));
        double[] w = GradCheck.uniform(99, y.numel(), 1.0);
        Tensor dy = keep(dev.allocate(DType.F32, y.shape()));
        Tensor dx = keep(dev.allocate(DType.F32, x.shape()));
        GradCheck.check(what, () -> {
            step.metrics().clear();
            step.train(17, 1.0 / t, v -> { });
            moe.forward(y, x);
            Map<String, Double> m = step.metrics().values();
            return GradCheck.dot(y, w) + m.get("moe_balance_loss") + m.get("moe_z_loss");
        }, () -> {
            dy.copyFrom(w);
            dev.backend().fill(dx, 0f);
            params.zeroGrad();
            moe.backward(dx, dy);
        }, probes(params, x, dx));
    }

    @Test
    void droplessMoeTopTwoWithJitterAndAuxiliaryLosses() {
        checkMoe("dropless moe, k = 2", new MoeSpec(3, 5, 2, 0, 0.3, 0.2, 0.1), 7, 21);
    }

    @Test
    void moeWithCapacityDroppingEntries() {
        // 9 tokens over 3 experts at factor 0.5: 2 slots each, so at least 3 entries are dropped.
        checkMoe("capacity moe, k = 1", new MoeSpec(3, 4, 1, 0.5, 0.3, 0.2, 0), 9, 23);
    }

    @Test
    void droplessMoeTopOne() {
        checkMoe("dropless moe, k = 1", new MoeSpec(4, 3, 1, 0, 0.5, 0.1, 0), 6, 25);
    }

    /**
     * The sparse FFN on training passes with fixed Gumbel noise (the pass's seed). A soft pass
     * (quantize 0) is a smooth function of everything, so every input and parameter is probed;
     * on a quantised pass (quantize 1) the one-hot is piecewise constant and the controller's
     * gradient is the straight-through one, so the probes are the FFN's own weights, which do not
     * move the choice.
     */
    private void checkSparseFfn(String what, SparseFfnSpec spec, int t, long seed) {
        Params.Builder pb = new Params.Builder();
        StepContext step = keep(new StepContext());
        ChannelMixer ffn = keep(spec.build(new LayerContext(pb, dev, "sparse_ffn", 6, 0, 2, 0.3, 5, step)));
        Params params = params(pb, seed, 0.8);
        Tensor x = input(seed + 2, t, 6);
        Tensor y = keep(dev.allocate(DType.F32, t, 6));
        double[] w = GradCheck.uniform(99, y.numel(), 1.0);
        Tensor dy = keep(dev.allocate(DType.F32, y.shape()));
        Tensor dx = keep(dev.allocate(DType.F32, x.shape()));
        List<GradCheck.Probe> probes = probes(params, x, dx);
        if (spec.quantize() > 0) {
            probes.removeIf(p -> p.name().equals("x") || p.name().contains("controller"));
        }
        GradCheck.check(what, () -> {
            step.train(17, 1.0 / t, v -> { });
            ffn.forward(y, x);
            return GradCheck.dot(y, w);
        }, () -> {
            dy.copyFrom(w);
            dev.backend().fill(dx, 0f);
            params.zeroGrad();
            ffn.backward(dx, dy);
        }, probes);
    }

    @Test
    void sparseFfnSoftPass() {
        checkSparseFfn("sparse ffn, soft, τ 0.1", new SparseFfnSpec(12, 4, 3, 0.1, 0), 7, 41);
        checkSparseFfn("sparse ffn, soft, τ 0.7", new SparseFfnSpec(15, 5, 2, 0.7, 0), 5, 43);
    }

    @Test
    void sparseFfnQuantisedPass() {
        checkSparseFfn("sparse ffn, quantised", new SparseFfnSpec(12, 3, 4, 0.1, 1), 7, 45);
    }

    private Seqs seqs(int... lengths) {
        int[] cu = new int[lengths.length + 1];
        for (int i = 0; i < lengths.length; i++) {
            cu[i + 1] = cu[i] + lengths[i];
        }
        TokenBatch b = new TokenBatch(new int[cu[lengths.length]], cu);
        return new Seqs(keep(dev.fromInts(cu, cu.length)), keep(dev.fromInts(b.positions(), b.size())), cu);
    }

    private LayerContext context(Params.Builder pb, String name, int c) {
        return new LayerContext(pb, dev, name, c, 0, 2, 0.3, 5);
    }

    /** The gradient check of a token mixer built from its spec, over packed sequences of the given lengths. */
    void checkMixer(String what, MixerSpec spec, int c, long seed, int... lengths) {
        checkMixerUpTo(what, spec, c, 0, seed, lengths);
    }

    /** The same in a model whose sequences are at most {@code maxSeq} tokens (0: no limit). */
    void checkMixerUpTo(String what, MixerSpec spec, int c, int maxSeq, long seed, int... lengths) {
        Params.Builder pb = new Params.Builder();
        TokenMixer mixer = keep(spec.build(new LayerContext(pb, dev, "mixer", c, 0, 2, 0.3, 5, keep(new StepContext()), maxSeq)));
        Params params = params(pb, seed, 0.7);
        Seqs s = seqs(lengths);
        Tensor x = input(seed + 2, s.tokens(), c);
        Tensor y = keep(dev.allocate(DType.F32, s.tokens(), c));
        check(what, params, x, y, () -> mixer.forward(y, x, s), (dx, dy) -> mixer.backward(dx, dy, s));
    }

    @Test
    void causalSelfAttentionWithGroupedQueries() {
        checkMixer("attention", new AttentionSpec(4, 2), 8, 8, 1, 7, 3);
    }

    @Test
    void attentionUnderTheFlatButterflyMask() {
        // 130 tokens span blocks 0 and 1 of 128; butterfly size 1 keeps only the diagonal blocks, so the last two
        // tokens attend only each other. (Longer sequences drown the finite differences in rounding.)
        checkMixerUpTo("flat butterfly attention", new AttentionSpec(2, 1, LinearSpec.DENSE, AttentionSpec.Mask.FLAT_BUTTERFLY, 128, 1),
                8, 256, 19, 130, 3);
    }

    @Test
    void s4dLinWithStatePassingBetweenBlocks() {
        // block 2 < the 7-token sequence: later blocks see earlier ones only through the carried state.
        checkMixer("s4d lin", new S4dSpec(4, "lin", 1e-3, 1e-1, 0.1, 2), 4, 14, 1, 7, 3);
    }

    @Test
    void s4dInv() {
        checkMixer("s4d inv", new S4dSpec(4, "inv", 1e-3, 1e-1, 0.1, 3), 4, 15, 1, 7, 3);
    }

    @Test
    void h3OneHeadOfFourChannels() {
        checkMixer("h3 1 head", new H3Spec(4, 1, 0.1, 2), 4, 16, 1, 7, 3);
    }

    @Test
    void h3TwoHeads() {
        checkMixer("h3 2 heads", new H3Spec(4, 2, 0.1, 2), 4, 17, 1, 7, 3);
    }

    @Test
    void h3HeadDimOneIsTheElementwiseGate() {
        checkMixer("h3 head dim 1", new H3Spec(4, 4, 0.1, 2), 4, 18, 1, 7, 3);
    }

    @Test
    void linearAttention() {
        checkMixer("linear attention", new LinearAttentionSpec(2, 1e-6), 8, 14, 1, 7, 3);
    }

    @Test
    void performerWithTwoFeatureBlocks() {
        // M = 5 over HS = 4: one full orthogonal block and one partial one.
        checkMixer("performer", new PerformerSpec(2, 5, 0, 1e-6), 8, 16, 1, 7, 3);
    }

    @Test
    void kernelizedAttentionEveryKernel() {
        // μ, σ and π (gmm), G and S (fastfood), the generator's weights get their gradients with ε frozen;
        // rks and prf train only q, k, v and proj.
        for (org.kindling.models.mixers.linear.KernelizedSpec.Kernel kernel
                : org.kindling.models.mixers.linear.KernelizedSpec.Kernel.values()) {
            int comps = kernel.key().startsWith("gmm") ? 2 : 1;
            checkMixer("kernelized " + kernel.key(),
                    new org.kindling.models.mixers.linear.KernelizedSpec(2, kernel, 3, comps, 1e-6), 8, 40, 1, 7, 3);
        }
    }

    @Test
    void kernelizedFastFoodPaddedWithACutBlockAndGenerator() {
        // HS = 6 pads to D = 8; M = 10 takes two blocks, the second cut to 2 rows. G, S and the generator's
        // W₁, b₁, W₂, b₂ get their gradients with the basis and ε frozen.
        for (org.kindling.models.mixers.linear.KernelizedSpec.Kernel kernel : java.util.List.of(
                org.kindling.models.mixers.linear.KernelizedSpec.Kernel.FASTFOOD_RKS,
                org.kindling.models.mixers.linear.KernelizedSpec.Kernel.FASTFOOD_PRF,
                org.kindling.models.mixers.linear.KernelizedSpec.Kernel.GENERATOR_RKS,
                org.kindling.models.mixers.linear.KernelizedSpec.Kernel.GENERATOR_PRF)) {
            checkMixer("kernelized " + kernel.key() + " HS 6",
                    new org.kindling.models.mixers.linear.KernelizedSpec(2, kernel, 10, 1, 1e-6), 12, 41, 1, 7, 3);
        }
    }

    @Test
    void skeinSketchingEveryColumnOfShortSequences() {
        // 8 samples ≥ every length: the draws take every column, so no probe can move them.
        checkMixer("skein bidirectional", new SkeinSpec(2, 8, 2, false, true), 8, 20, 1, 7, 3);
        checkMixer("skein causal", new SkeinSpec(2, 8, 0, true, true), 8, 21, 1, 7, 3);
    }

    @Test
    void skeinWithSketchedColumns() {
        // 2 samples of sequences up to 7 tokens: the kernel test checks probes that move the draws are rare;
        // these seeds keep them fixed.
        checkMixer("skein bidirectional sketched", new SkeinSpec(2, 2, 1, false, true), 8, 22, 1, 7, 3);
        checkMixer("skein causal sketched", new SkeinSpec(2, 2, 0, true, true), 8, 23, 1, 7, 3);
    }

    private Block block(Params.Builder pb, int heads, int kvHeads) {
        return keep(new Block(new LayerNorm(pb, dev, "ln_1", 8, 1e-5), new AttentionSpec(heads, kvHeads).build(context(pb, "attn", 8)),
                new LayerNorm(pb, dev, "ln_2", 8, 1e-5), new MlpSpec(2).build(context(pb, "mlp", 8)), 8, new Activations(dev, "block")));
    }

    @Test
    void block() {
        Params.Builder pb = new Params.Builder();
        Block block = block(pb, 2, 2);
        Params params = params(pb, 10, 0.7);
        Seqs s = seqs(5, 4);
        Tensor x = input(11, 9, 8);
        Tensor y = keep(dev.allocate(DType.F32, 9, 8));
        check("block", params, x, y, () -> block.forward(y, x, s), (dx, dy) -> block.backward(dx, dy, s));
    }

    @Test
    void blockWithResidualDropout() {
        // The masks are a function of the seed, so the loss stays a deterministic function of x and the weights.
        Params.Builder pb = new Params.Builder();
        Block block = block(pb, 4, 1);
        block.dropout(0.3f, 1234);
        Params params = params(pb, 12, 0.7);
        Seqs s = seqs(2, 6, 1);
        Tensor x = input(13, 9, 8);
        Tensor y = keep(dev.allocate(DType.F32, 9, 8));
        check("block with dropout", params, x, y, () -> block.forward(y, x, s), (dx, dy) -> block.backward(dx, dy, s));
    }
}
