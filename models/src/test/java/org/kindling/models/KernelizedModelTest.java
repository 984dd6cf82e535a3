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

/** A 2-layer model with learned-kernel attention trains, moves its spectral parameters, resumes bit-identically and is not exported. */
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
        trainsAndResumes(Kernel.GMM_RKS, "epsilon", "mu", "mix");
        try (Device cpu = CpuDevice.open(1); Gpt model = new Gpt(model(Kernel.GMM_RKS), cpu, 1)) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> HfExport.write(model, 0, dir));
            assertTrue(e.getMessage().contains("kernelized"), e.getMessage());
        }
    }

    @Test
    void fastFoodPrfTrainsItsDiagonalsAndResumesBitIdentically() {
        trainsAndResumes(Kernel.FASTFOOD_PRF, "fastfood_basis", "fastfood_g", "fastfood_s");
    }

    @Test
    void generatorRksTrainsItsNetworkAndResumesBitIdentically() {
        trainsAndResumes(Kernel.GENERATOR_RKS, "epsilon", "generator_w1", "generator_w2", "generator_b2");
    }

    /** 8 steps with a checkpoint after 4: the loss falls, {@code trained} move, {@code frozen} does not, the resume repeats steps 5–8 bit for bit. */
    private void trainsAndResumes(Kernel kernel, String frozen, String... trained) {
        ModelConfig cfg = model(kernel);
        TrainConfig train = new TrainConfig(7, 3e-3, 3e-4, 2, 8, 0.1, 0.9, 0.95, 1e-8, 1.0, 1, 512, 5, 0, 2);
        Checkpoints ckpt = new Checkpoints(new LocalRunStorage(dir.resolve("run-" + kernel.key())));
        List<Double> losses = new ArrayList<>();
        float[] straightWeights;
        try (Device cpu = CpuDevice.open(2); Gpt model = new Gpt(cfg, cpu, train.seed()); Trainer t = new Trainer(model, train)) {
            List<float[]> before = new ArrayList<>();
            for (String name : trained) {
                before.add(model.params().get("h.0.kernelized." + name).value().toFloatArray());
            }
            float[] frozen0 = model.params().get("h.0.kernelized." + frozen).value().toFloatArray();
            DataSource d = data();
            for (int i = 0; i < 8; i++) {
                losses.add(t.step(d).loss());
                if (i == 3) {
                    ckpt.save(t, new RunConfig(cfg, train), 2, d.position());
                }
            }
            assertTrue(losses.get(7) < losses.get(0), kernel.key() + ": loss did not fall: " + losses);
            for (int i = 0; i < trained.length; i++) {
                assertFalse(Arrays.equals(before.get(i), model.params().get("h.0.kernelized." + trained[i]).value().toFloatArray()),
                        kernel.key() + ": " + trained[i] + " trains");
            }
            assertArrayEquals(frozen0, model.params().get("h.0.kernelized." + frozen).value().toFloatArray(), frozen + " is frozen");
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
            assertEquals(losses.subList(4, 8), resumed, kernel.key());
            assertArrayEquals(straightWeights, model.params().values().toFloatArray(), kernel.key());
        }
    }
}
