package org.kindling.models.train;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.List;
import org.junit.jupiter.api.Test;
import org.kindling.models.Gpt;
import org.kindling.models.channel.MlpSpec;
import org.kindling.models.channel.MoeSpec;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.Synthetic;
import org.kindling.ops.CountingDevice;

/**
 * A training step reads the device back once (loss sum, gradient norm and the layers' metrics
 * together), as an asynchronous device needs; a mixture-of-experts layer adds its routing counts,
 * once per micro-batch, for the exchange between workers.
 */
class ReadBackTest {
    private static final ModelConfig MODEL = ModelConfig.gpt(20, 32, 2, 4, 2, 64, 4, 0, 0.02, 1e-5);

    private static int readBacksPerStep(ModelConfig model, int accum) {
        TrainConfig train = new TrainConfig(7, 3e-3, 3e-4, 1, 10, 0.1, 0.9, 0.95, 1e-8, 1.0, accum, 512, 5, 0, 2);
        DataSource data = Synthetic.source(Synthetic.associativeRecall(20, 32, 64, 5), 4);
        try (CountingDevice dev = new CountingDevice(2); Gpt m = new Gpt(model, dev, 7); Trainer t = new Trainer(m, train)) {
            t.step(data);
            dev.takeReadBacks();
            t.step(data);
            return dev.takeReadBacks();
        }
    }

    @Test
    void aDenseStepReadsTheDeviceOnce() {
        assertEquals(1, readBacksPerStep(MODEL, 1));
        assertEquals(1, readBacksPerStep(MODEL, 3));
    }

    @Test
    void aMixtureOfExpertsAddsItsRoutingCountsPerMicroBatch() {
        ModelConfig moe = MODEL.withChannelMixers(List.of(new MlpSpec(4), new MoeSpec(4, 48, 2, 1.0, 0.01, 0.001, 0.01)));
        assertEquals(1 + 2, readBacksPerStep(moe, 2));
    }
}
