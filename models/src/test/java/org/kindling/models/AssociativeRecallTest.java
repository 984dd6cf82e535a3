package org.kindling.models;

import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.Synthetic;
import org.kindling.models.train.DataParallel;
import org.kindling.models.train.Trainer;
import org.kindling.ops.Device;
import org.kindling.ops.cpu.CpuDevice;

/**
 * The H3 associative-recall target: a 2-layer attention model reaches ≥ 99 % held-out accuracy
 * (vocab 20, 64 tokens). It takes 8,000 steps of 128 fresh sequences (about 31 minutes on two
 * cores), so it is tagged "long": {@code mvn -B verify -Plong-tests} runs it.
 */
@Tag("long")
class AssociativeRecallTest {
    @Test
    void twoLayerAttentionReaches99PercentOnAssociativeRecall() {
        int steps = 8000;
        int batch = 128;
        int replicas = Math.max(1, Math.min(Runtime.getRuntime().availableProcessors(), 4));
        while (batch % replicas != 0) {
            replicas--;
        }
        ModelConfig cfg = ModelConfig.gpt(20, 128, 2, 2, 2, 64, 4, 0, 0.02, 1e-5);
        TrainConfig train = new TrainConfig(1, 1e-3, 1e-4, 100, steps, 0.0, 0.9, 0.98, 1e-8, 1.0, 1, batch * 64, 100, 0, 1);
        Synthetic.Examples heldOut = Synthetic.associativeRecall(20, 64, 1000, -1);
        int per = batch / replicas;
        try (DataParallel dp = new DataParallel(replicas, (rank, sync) -> {
            Device dev = CpuDevice.open(1);
            Gpt model = new Gpt(cfg, dev, 1);
            return new DataParallel.Replica(dev, model, new Trainer(model, train, sync));
        })) {
            List<DataSource> data = new ArrayList<>();
            for (int r = 0; r < replicas; r++) {
                data.add(Synthetic.stream(Synthetic.Task.ASSOCIATIVE_RECALL, 20, 64, batch, 1, r * per, (r + 1) * per));
            }
            for (int s = 0; s < steps; s++) {
                dp.step(data);
            }
            double accuracy = Synthetic.accuracy(dp.replicas().get(0).model(), heldOut, 250);
            assertTrue(accuracy >= 0.99, "held-out accuracy " + accuracy + " after " + steps + " steps");
        }
    }
}
