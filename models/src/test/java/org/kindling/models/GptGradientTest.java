package org.kindling.models;

import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.kindling.ops.Device;

/** End-to-end finite differences through a 2-layer model: embeddings, blocks, final norm, tied head, loss. */
class GptGradientTest {

    @Test
    void twoLayerModelOnAVarlenBatchWithALossMask() {
        check(0, false);
    }

    @Test
    void withDropoutInTrainingMode() {
        // The masks are a function of the seed, so the loss stays a deterministic function of the weights.
        check(0.25, true);
    }

    private static void check(double dropout, boolean training) {
        ModelConfig cfg = new ModelConfig(17, 8, 2, 2, 1, 16, List.of("attention", "attention"), List.of("mlp", "mlp"), 2, dropout,
                0.2, 1e-5);
        int[] tokens = {3, 16, 0, 5, 5, 9, 1, 2, 11, 7, 4};
        boolean[] mask = new boolean[tokens.length];
        java.util.Arrays.fill(mask, true);
        mask[4] = false;
        TokenBatch batch = new TokenBatch(tokens, new int[] {0, 1, 6, 11}, mask);
        try (Device dev = Device.cpu(2); Gpt model = new Gpt(cfg, dev, 5)) {
            model.training(training, 42);
            List<GradCheck.Probe> probes = new ArrayList<>();
            for (Param p : model.params().list()) {
                probes.add(new GradCheck.Probe(p.name(), p.value(), p.grad()));
            }
            GradCheck.check("gpt", () -> model.forward(batch, 0f), () -> {
                model.params().zeroGrad();
                model.forward(batch, 1f);
                model.backward();
            }, probes);
        }
    }
}
