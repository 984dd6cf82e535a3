package org.kindling.models.train;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.Stream;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;
import org.kindling.models.Gpt;
import org.kindling.models.channel.MlpSpec;
import org.kindling.models.channel.MoeSpec;
import org.kindling.models.channel.SparseFfnSpec;
import org.kindling.models.config.LayerDefaults;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.mixers.Mixers;
import org.kindling.ops.Device;
import org.kindling.ops.cpu.CpuDevice;

/**
 * After one step at the largest packed batch, training steps whose token counts change every step
 * allocate nothing on the device: activations only grow, layers' backward and decode scratch comes
 * from the model's workspace, and kernel scratch from the device's.
 */
class SteadyStateAllocationTest {
    private static final int VOCAB = 29;
    private static final int C = 16;
    private static final int MAX_LEN = 24;
    private static final int MAX_SEQS = 4;

    static Stream<String> configs() {
        List<String> all = new ArrayList<>(Mixers.types());
        all.add("moe");
        all.add("sparse_ffn");
        return all.stream();
    }

    /** Two layers of the named mixer with its defaults, or attention with a mixture of experts (a sparse FFN) in layer 2 for "moe" ("sparse_ffn"). */
    private static ModelConfig model(String name) {
        ModelConfig base = ModelConfig.gpt(VOCAB, C, 2, 2, 2, 1, 4, 0, 0.2, 1e-5).withPositions(ModelConfig.PosEmb.NONE, 0);
        if (name.equals("moe")) {
            return base.withChannelMixers(List.of(new MlpSpec(4), new MoeSpec(4, 32, 2, 0, 0.01, 0.001, 0)));
        }
        if (name.equals("sparse_ffn")) {
            return base.withChannelMixers(List.of(new MlpSpec(4), new SparseFfnSpec(64, 8, 4, 0.1, 0.5)));
        }
        return base.withMixers(Collections.nCopies(2, Mixers.named(name, new LayerDefaults(C, 2, 2, 4))));
    }

    /** Position 0 is the largest batch (MAX_SEQS sequences of MAX_LEN); later ones pack 1..MAX_SEQS sequences of 2..MAX_LEN tokens. */
    private static TokenBatch batch(long position) {
        SplittableRandom r = new SplittableRandom(position);
        int seqs = position == 0 ? MAX_SEQS : 1 + r.nextInt(MAX_SEQS);
        int[] cu = new int[seqs + 1];
        for (int s = 0; s < seqs; s++) {
            cu[s + 1] = cu[s] + (position == 0 ? MAX_LEN : 2 + r.nextInt(MAX_LEN - 1));
        }
        int[] tokens = new int[cu[seqs]];
        for (int i = 0; i < tokens.length; i++) {
            tokens[i] = r.nextInt(VOCAB);
        }
        return new TokenBatch(tokens, cu);
    }

    @ParameterizedTest
    @MethodSource("configs")
    void stepsOfVaryingTokenCountsAllocateNothingAfterWarmUp(String config) {
        TrainConfig cfg = new TrainConfig(7, 1e-3, 1e-4, 1, 20, 0.1, 0.9, 0.95, 1e-8, 1.0, 1, MAX_SEQS * MAX_LEN, 5, 0, 2);
        DataSource data = DataSource.indexed(SteadyStateAllocationTest::batch);
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(model(config), dev, 3); Trainer t = new Trainer(model, cfg)) {
            t.step(data);
            long warm = dev.allocations();
            List<Integer> sizes = new ArrayList<>();
            for (int i = 0; i < 8; i++) {
                sizes.add(batch(data.position()).size());
                t.step(data);
            }
            assertTrue(sizes.stream().distinct().count() > 1, "token counts vary: " + sizes);
            assertEquals(0, dev.allocations() - warm, config + ": device allocations in 8 steps of " + sizes + " tokens");
        }
    }
}
