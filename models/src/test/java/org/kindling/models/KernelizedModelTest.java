package org.kindling.models;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.RunConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.Synthetic;
import org.kindling.models.io.Checkpoints;
import org.kindling.models.io.HfExport;
import org.kindling.models.io.LocalRunStorage;
import org.kindling.models.mixers.linear.KernelizedSpec;
import org.kindling.models.mixers.linear.KernelizedSpec.Kernel;
import org.kindling.models.train.Trainer;
import org.kindling.ops.Device;
import org.kindling.ops.cpu.CpuDevice;

/** A 2-layer model with learned-kernel attention trains, moves its spectral mixture, resumes bit-identically and is not exported. */
class KernelizedModelTest {
    private static final int VOCAB = 29;

    @TempDir
    Path dir;

    private static ModelConfig model(Kernel kernel) {
        return ModelConfig.gpt(VOCAB, 16, 2, 2, 2, 64, 4, 0, 0.2, 1e-5)
                .withMixers(Collections.nCopies(2, new KernelizedSpec(2, kernel, 4, kernel == Kernel.GMM_RKS || kernel == Kernel.GMM_PRF ? 2 : 1, 1e-6)));
    }

    private static DataSource data() {
        return Synthetic.source(Synthetic.associativeRecall(VOCAB - 1, 24, 64, 5), 8);
    }

    @Test
    void gmmRksTrainsMovesItsMixtureAndResumesBitIdentically() {
        ModelConfig cfg = model(Kernel.GMM_RKS);
        TrainConfig train = new TrainConfig(7, 3e-3, 3e-4, 2, 8, 0.1, 0.9, 0.95, 1e-8, 1.0, 1, 512, 5, 0, 2);
        Checkpoints ckpt = new Checkpoints(new LocalRunStorage(dir.resolve("run")));
        List<Double> losses = new ArrayList<>();
        float[] straightWeights;
        try (Device cpu = CpuDevice.open(2); Gpt model = new Gpt(cfg, cpu, train.seed()); Trainer t = new Trainer(model, train)) {
            float[] mu0 = model.params().get("h.0.kernelized.mu").value().toFloatArray();
            float[] mix0 = model.params().get("h.0.kernelized.mix").value().toFloatArray();
            float[] eps0 = model.params().get("h.0.kernelized.epsilon").value().toFloatArray();
            DataSource d = data();
            for (int i = 0; i < 8; i++) {
                losses.add(t.step(d).loss());
                if (i == 3) {
                    ckpt.save(t, new RunConfig(cfg, train), 2, d.position());
                }
            }
            assertTrue(losses.get(7) < losses.get(0), "loss did not fall: " + losses);
            assertFalse(Arrays.equals(mu0, model.params().get("h.0.kernelized.mu").value().toFloatArray()), "μ trains");
            assertFalse(Arrays.equals(mix0, model.params().get("h.0.kernelized.mix").value().toFloatArray()), "π trains");
            assertArrayEquals(eps0, model.params().get("h.0.kernelized.epsilon").value().toFloatArray(), "ε is frozen");
            straightWeights = model.params().values().toFloatArray();
        }
        try (Device cpu = CpuDevice.open(2); Gpt model = new Gpt(cfg, cpu, train.seed()); Trainer t = new Trainer(model, train)) {
            Checkpoints.State state = ckpt.restore(ckpt.latest().orElseThrow(), t);
            DataSource d = data();
            d.seek(state.dataPosition());
            List<Double> resumed = new ArrayList<>();
            for (int i = 4; i < 8; i++) {
                resumed.add(t.step(d).loss());
            }
            assertEquals(losses.subList(4, 8), resumed);
            assertArrayEquals(straightWeights, model.params().values().toFloatArray());
        }
        try (Device cpu = CpuDevice.open(1); Gpt model = new Gpt(cfg, cpu, 1)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> HfExport.write(model, 0, dir));
            assertTrue(e.getMessage().contains("kernelized"), e.getMessage());
        }
    }
}
