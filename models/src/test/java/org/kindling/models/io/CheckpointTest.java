package org.kindling.models.io;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.kindling.models.Gpt;
import org.kindling.models.channel.MlpSpec;
import org.kindling.models.channel.MoeSpec;
import org.kindling.models.channel.SparseFfnSpec;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.OptimizerConfig;
import org.kindling.models.config.RunConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.Synthetic;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.train.TrainLoop;
import org.kindling.models.train.Trainer;
import org.kindling.ops.Device;
import org.kindling.ops.cpu.CpuDevice;

class CheckpointTest {
    private static final ModelConfig MODEL = ModelConfig.gpt(20, 32, 2, 4, 2, 64, 4, 0, 0.02, 1e-5);
    private static final TrainConfig TRAIN = new TrainConfig(7, 3e-3, 3e-4, 5, 20, 0.1, 0.9, 0.95, 1e-8, 1.0, 2, 512, 5, 0, 2);
    private static final RunConfig RUN = new RunConfig(MODEL, TRAIN);

    @TempDir
    Path dir;

    private static DataSource data() {
        return Synthetic.source(Synthetic.associativeRecall(20, 32, 200, 5), 8);
    }

    /** Losses, weights and the optimizer's state tensors by name. */
    private record Outcome(List<Double> losses, float[] weights, Map<String, float[]> state) {
    }

    private static Outcome train(Trainer trainer, DataSource data, int steps, List<Double> losses) {
        for (int i = 0; i < steps; i++) {
            losses.add(trainer.step(data).loss());
        }
        Map<String, float[]> state = new LinkedHashMap<>();
        trainer.optimizer().state().forEach((name, t) -> state.put(name, t.read()));
        return new Outcome(losses, trainer.model().params().values().toFloatArray(), state);
    }

    /** In bf16 too: checkpoints hold the fp32 masters, and loading them refreshes the bf16 copies the GEMMs read. */
    @org.junit.jupiter.params.ParameterizedTest
    @org.junit.jupiter.params.provider.EnumSource(org.kindling.models.nn.Precision.class)
    void resumingFromACheckpointIsBitIdentical(org.kindling.models.nn.Precision precision) {
        assertResumesBitIdentically(MODEL, TRAIN.withPrecision(precision));
    }

    /** AdamW's moments in host memory save to and restore from the same tensors as on the device. */
    @Test
    void aRunWithOffloadedMomentsResumesBitIdentically() {
        assertResumesBitIdentically(MODEL, TRAIN.withOffload(true));
    }

    /** Pixelfly attention and butterfly MLPs: the config the checkpoint keeps rebuilds the same layout. */
    @Test
    void aModelWithStructuredProjectionsResumesBitIdentically() {
        org.kindling.models.nn.LinearSpec fly = new org.kindling.models.nn.LinearSpec(org.kindling.models.nn.LinearSpec.Kind.PIXELFLY, 8, 2, 1, 4, true);
        org.kindling.models.nn.LinearSpec bf = new org.kindling.models.nn.LinearSpec(org.kindling.models.nn.LinearSpec.Kind.BUTTERFLY, 32, 16, 2, 32, false);
        ModelConfig structured = MODEL.withMixers(List.of(new org.kindling.models.mixers.attention.AttentionSpec(4, 2, fly),
                new org.kindling.models.mixers.attention.AttentionSpec(4, 2))).withChannelMixers(List.of(new MlpSpec(4, true, bf), new MlpSpec(4)));
        assertResumesBitIdentically(structured, TRAIN);
    }

    /** A sparse FFN's noise and quantised passes follow the step's seed, so a resumed run redraws them exactly. */
    @Test
    void aModelWithASparseFfnResumesBitIdentically() {
        assertResumesBitIdentically(MODEL.withChannelMixers(List.of(new SparseFfnSpec(128, 8, 16, 0.1, 0.5), new MlpSpec(4))), TRAIN);
    }

    private void assertResumesBitIdentically(ModelConfig cfg, TrainConfig train) {
        RunConfig run = new RunConfig(cfg, train);
        Outcome straight;
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(cfg, dev, train.seed()); Trainer t = new Trainer(model, train)) {
            straight = train(t, data(), 20, new ArrayList<>());
        }
        Checkpoints ckpt = new Checkpoints(new LocalRunStorage(dir));
        List<Double> losses = new ArrayList<>();
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(cfg, dev, train.seed()); Trainer t = new Trainer(model, train)) {
            DataSource d = data();
            train(t, d, 10, losses);
            assertEquals("step-10", ckpt.save(t, run, 3, d.position()));
        }
        Outcome resumed;
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(cfg, dev, 999); Trainer t = new Trainer(model, train)) {
            String latest = ckpt.latest().orElseThrow();
            // Tensors stream in 12-byte pieces: most arrive in many, the last of each often shorter.
            Checkpoints.State state = new Checkpoints(new LocalRunStorage(dir), 12).restore(latest, t);
            assertEquals(10, state.step());
            assertEquals(10, t.stepCount());
            assertEquals(run, RunConfig.fromMap(state.config(), "state.json"));
            DataSource d = data();
            d.seek(state.dataPosition());
            resumed = train(t, d, 10, losses);
        }
        assertEquals(straight.losses(), resumed.losses());
        assertArrayEquals(straight.weights(), resumed.weights());
        assertEquals(straight.state().keySet(), resumed.state().keySet());
        straight.state().forEach((name, values) -> assertArrayEquals(values, resumed.state().get(name), name));
    }

    /**
     * M-FAC's checkpoint holds its gradient window, Gram matrix and momentum, so a resumed run takes
     * the same steps; a checkpoint of the other optimizer is refused, naming the tensor.
     */
    @Test
    void anMfacRunResumesBitIdenticallyAndAnAdamWCheckpointIsRefused() {
        TrainConfig mfac = TRAIN.withOptimizer(OptimizerConfig.mfac(4, 1e-4, 0.5));
        assertResumesBitIdentically(MODEL, mfac);
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(MODEL, dev, 1); Trainer t = new Trainer(model, mfac)) {
            assertEquals(List.of("mfac.window", "mfac.gram", "mfac.momentum"), List.copyOf(t.optimizer().state().keySet()));
        }
        Checkpoints ckpt = new Checkpoints(new LocalRunStorage(dir.resolve("adamw")));
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(MODEL, dev, 1); Trainer t = new Trainer(model, TRAIN)) {
            t.step(data());
            ckpt.save(t, new RunConfig(MODEL, TRAIN), 3, 1);
        }
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(MODEL, dev, 1); Trainer t = new Trainer(model, mfac)) {
            IllegalStateException e = assertThrows(IllegalStateException.class, () -> ckpt.restore("step-1", t));
            assertTrue(e.getMessage().contains("optimizer.safetensors: tensor m."), e.getMessage());
        }
    }

    /** The expert count is in the tensors' shapes: a model with another one refuses the checkpoint, naming the tensor. */
    @Test
    void aCheckpointOfAnotherExpertCountFailsToLoad() {
        ModelConfig four = MODEL.withChannelMixers(List.of(new MlpSpec(4), new MoeSpec(4, 64, 1, 0, 0.01, 0.001, 0)));
        ModelConfig two = MODEL.withChannelMixers(List.of(new MlpSpec(4), new MoeSpec(2, 64, 1, 0, 0.01, 0.001, 0)));
        Checkpoints ckpt = new Checkpoints(new LocalRunStorage(dir));
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(four, dev, 1); Trainer t = new Trainer(model, TRAIN)) {
            t.step(data());
            ckpt.save(t, new RunConfig(four, TRAIN), 3, 1);
        }
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(two, dev, 1); Trainer t = new Trainer(model, TRAIN)) {
            IllegalStateException e = assertThrows(IllegalStateException.class, () -> ckpt.restore("step-1", t));
            assertTrue(e.getMessage().contains("tensor h.1.moe.experts.fc.weight has shape [4, 64, 32] but the model expects [2, 64, 32]")
                    || e.getMessage().contains("tensor h.1.moe.router.weight has shape [4, 32] but the model expects [2, 32]"),
                    e.getMessage());
        }
    }

    @Test
    void theTrainLoopCheckpointsOnScheduleAndResumesAfterACrash() {
        TrainConfig cfg = new TrainConfig(7, 3e-3, 3e-4, 2, 8, 0.1, 0.9, 0.95, 1e-8, 1.0, 1, 512, 2, 3, 5);
        RunConfig run = new RunConfig(MODEL, cfg);
        float[] straight;
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(MODEL, dev, 7); Trainer t = new Trainer(model, cfg)) {
            TrainLoop.run(t, data(), new Checkpoints(new LocalRunStorage(dir.resolve("straight"))), run, r -> { });
            straight = model.params().values().toFloatArray();
        }
        Checkpoints ckpt = new Checkpoints(new LocalRunStorage(dir.resolve("run")));
        List<Integer> seen = new ArrayList<>();
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(MODEL, dev, 7); Trainer t = new Trainer(model, cfg)) {
            DataSource inner = data();
            DataSource crashing = new DataSource() {
                @Override
                public TokenBatch next() {
                    if (inner.position() == 7) {
                        throw new IllegalStateException("simulated crash while reading the 8th batch");
                    }
                    return inner.next();
                }

                @Override
                public long position() {
                    return inner.position();
                }

                @Override
                public void seek(long position) {
                    inner.seek(position);
                }
            };
            assertThrows(IllegalStateException.class, () -> TrainLoop.run(t, crashing, ckpt, run, r -> seen.add(r.step())));
        }
        assertEquals(List.of(3, 6), ckpt.steps());
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(MODEL, dev, 7); Trainer t = new Trainer(model, cfg)) {
            assertEquals(8, TrainLoop.run(t, data(), ckpt, run, r -> seen.add(r.step())));
            assertArrayEquals(straight, model.params().values().toFloatArray(), "crash at 7, resume from 6: same weights");
        }
        assertEquals(List.of(1, 2, 3, 4, 5, 6, 7, 7, 8), seen);
        assertEquals(List.of(3, 6, 8), ckpt.steps());
    }

    @Test
    void keepsTheNewestKAndPointsLatestAtTheLast() throws IOException {
        Checkpoints ckpt = new Checkpoints(new LocalRunStorage(dir));
        try (Device dev = CpuDevice.open(1); Gpt model = new Gpt(MODEL, dev, 1); Trainer t = new Trainer(model, TRAIN)) {
            DataSource d = data();
            for (int i = 0; i < 5; i++) {
                t.step(d);
                ckpt.save(t, RUN, 2, d.position());
            }
            // Saving the same step again (a retried task) changes nothing but LATEST.
            ckpt.save(t, RUN, 2, d.position());
        }
        assertEquals(List.of(4, 5), ckpt.steps());
        assertEquals("step-5", ckpt.latest().orElseThrow());
        assertEquals("step-5\n", Files.readString(dir.resolve("checkpoints/LATEST")));
        try (var s = Files.list(dir.resolve("checkpoints"))) {
            assertFalse(s.anyMatch(p -> p.getFileName().toString().startsWith(".tmp")), "no temporary directories remain");
        }
    }

    @Test
    void aCrashBeforeLatestMovesLeavesThePreviousCheckpointUsable() {
        LocalRunStorage local = new LocalRunStorage(dir);
        RunStorage crashing = new RunStorage() {
            @Override
            public java.io.OutputStream create(String path) throws IOException {
                return local.create(path);
            }

            @Override
            public java.io.InputStream open(String path) throws IOException {
                return local.open(path);
            }

            @Override
            public boolean exists(String path) {
                return local.exists(path);
            }

            @Override
            public void rename(String from, String to) throws IOException {
                local.rename(from, to);
            }

            @Override
            public void replace(String from, String to) throws IOException {
                throw new IOException("simulated crash before LATEST is updated");
            }

            @Override
            public void delete(String path) throws IOException {
                local.delete(path);
            }

            @Override
            public List<String> list(String d) throws IOException {
                return local.list(d);
            }

            @Override
            public String describe(String path) {
                return local.describe(path);
            }
        };
        float[] atStep1;
        try (Device dev = CpuDevice.open(1); Gpt model = new Gpt(MODEL, dev, 1); Trainer t = new Trainer(model, TRAIN)) {
            DataSource d = data();
            t.step(d);
            new Checkpoints(local).save(t, RUN, 3, d.position());
            atStep1 = model.params().values().toFloatArray();
            t.step(d);
            assertThrows(java.io.UncheckedIOException.class, () -> new Checkpoints(crashing).save(t, RUN, 3, d.position()));
        }
        Checkpoints ckpt = new Checkpoints(local);
        assertEquals("step-1", ckpt.latest().orElseThrow());
        try (Device dev = CpuDevice.open(1); Gpt model = new Gpt(MODEL, dev, 2); Trainer t = new Trainer(model, TRAIN)) {
            ckpt.restore("step-1", t);
            assertArrayEquals(atStep1, model.params().values().toFloatArray());
        }
    }

    @Test
    void truncatedOrForeignFilesNameTheFileAndTheProblem() throws IOException {
        Checkpoints ckpt = new Checkpoints(new LocalRunStorage(dir));
        try (Device dev = CpuDevice.open(1); Gpt model = new Gpt(MODEL, dev, 1); Trainer t = new Trainer(model, TRAIN)) {
            DataSource d = data();
            t.step(d);
            ckpt.save(t, RUN, 3, d.position());
            Path weights = dir.resolve("checkpoints/step-1/model.safetensors");
            byte[] whole = Files.readAllBytes(weights);
            Files.write(weights, java.util.Arrays.copyOf(whole, whole.length - 100));
            IllegalStateException e = assertThrows(IllegalStateException.class, () -> ckpt.restore("step-1", t));
            assertTrue(e.getMessage().contains(weights.toString()) && e.getMessage().contains("truncated"), e.getMessage());
            assertTrue(e.getCause() instanceof CorruptFileException, "marked as a file that retrying cannot fix");
            Files.writeString(weights, "this is a text file, not tensors");
            e = assertThrows(IllegalStateException.class, () -> ckpt.restore("step-1", t));
            assertTrue(e.getMessage().contains("not a safetensors file"), e.getMessage());
            Files.write(weights, whole);
            Path state = dir.resolve("checkpoints/step-1/state.json");
            String saved = Files.readString(state);
            Files.writeString(state, "{\"format_version\": 99}");
            e = assertThrows(IllegalStateException.class, () -> ckpt.restore("step-1", t));
            assertTrue(e.getMessage().contains("format_version 99"), e.getMessage());
            // Version 1 counted data positions in chunks: its state and weights still load, but it cannot resume.
            Files.writeString(state, saved.replaceAll("\"format_version\"\\s*:\\s*2", "\"format_version\": 1"));
            assertEquals(1, ckpt.state("step-1").formatVersion());
            e = assertThrows(IllegalStateException.class, () -> ckpt.restore("step-1", t));
            assertTrue(e.getMessage().contains("format_version 1 cannot resume") && e.getMessage().contains("start a new run"),
                    e.getMessage());
            assertTrue(e.getCause() instanceof CorruptFileException, "retrying cannot fix it");
        }
        try (Device dev = CpuDevice.open(1); Gpt other = new Gpt(ModelConfig.gpt(20, 64, 2, 4, 2, 64, 4, 0, 0.02, 1e-5), dev, 1)) {
            IllegalStateException e = assertThrows(IllegalStateException.class, () -> ckpt.loadWeights("step-1", other));
            assertTrue(e.getMessage().contains("has shape [20, 32] but the model expects [20, 64]"), e.getMessage());
        }
        try (Device dev = CpuDevice.open(1); Gpt shallower = new Gpt(ModelConfig.gpt(20, 32, 1, 4, 2, 64, 4, 0, 0.02, 1e-5), dev, 1)) {
            IllegalStateException e = assertThrows(IllegalStateException.class, () -> ckpt.loadWeights("step-1", shallower));
            assertTrue(e.getMessage().contains("tensor h.1.") && e.getMessage().contains("is not part of this model"),
                    e.getMessage());
        }
        Files.writeString(dir.resolve("checkpoints/LATEST"), "step-77\n");
        IllegalStateException e = assertThrows(IllegalStateException.class, ckpt::latest);
        assertTrue(e.getMessage().contains("step-77"), e.getMessage());
    }

    /** Fixed tensors (Performer's random features) are saved and restored with the weights, and are part of the model's names. */
    @Test
    void fixedTensorsTravelWithTheWeights() {
        ModelConfig performer = MODEL.withMixers(java.util.Collections.nCopies(2,
                new org.kindling.models.mixers.linear.PerformerSpec(4, 16, 0, 1e-6)));
        Checkpoints ckpt = new Checkpoints(new LocalRunStorage(dir));
        float[] features;
        try (Device dev = CpuDevice.open(1); Gpt model = new Gpt(performer, dev, 1); Trainer t = new Trainer(model, TRAIN)) {
            features = model.params().get("h.1.performer.features").value().toFloatArray();
            ckpt.save(t, new RunConfig(performer, TRAIN), 2, 0);
        }
        try (Device dev = CpuDevice.open(1); Gpt other = new Gpt(performer, dev, 2)) {
            assertFalse(java.util.Arrays.equals(features, other.params().get("h.1.performer.features").value().toFloatArray()),
                    "another seed draws other features");
            ckpt.loadWeights("step-0", other);
            assertArrayEquals(features, other.params().get("h.1.performer.features").value().toFloatArray());
        }
        try (Device dev = CpuDevice.open(1); Gpt plain = new Gpt(MODEL, dev, 1)) {
            IllegalStateException e = assertThrows(IllegalStateException.class, () -> ckpt.loadWeights("step-0", plain));
            assertTrue(e.getMessage().contains("is not part of this model"), e.getMessage());
        }
    }

    @Test
    void safetensorsRoundTripsWithMetadata() throws IOException {
        Map<String, Safetensors.Tensor> tensors = new LinkedHashMap<>();
        tensors.put("a", new Safetensors.Tensor(new int[] {2, 3}, new float[] {1, 2, 3, 4, 5, Float.NaN}));
        tensors.put("empty", new Safetensors.Tensor(new int[] {0}, new float[0]));
        tensors.put("b", new Safetensors.Tensor(new int[] {1}, new float[] {-0.5f}));
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        Safetensors.write(out, tensors, Map.of("format", "pt"));
        byte[] bytes = out.toByteArray();
        long headerLen = java.nio.ByteBuffer.wrap(bytes, 0, 8).order(java.nio.ByteOrder.LITTLE_ENDIAN).getLong();
        assertEquals(0, headerLen % 8, "data is 8-byte aligned");
        Safetensors.Contents c = Safetensors.read(new ByteArrayInputStream(bytes), "mem");
        assertEquals(List.of("a", "empty", "b"), new ArrayList<>(c.tensors().keySet()));
        assertArrayEquals(tensors.get("a").data(), c.tensors().get("a").data());
        assertArrayEquals(new int[] {2, 3}, c.tensors().get("a").shape());
        assertEquals("pt", c.metadata().get("format"));
    }
}
