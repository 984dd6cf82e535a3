package org.kindling.models.mixers.linear;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.kindling.models.config.ConfigReader;
import org.kindling.models.config.LayerDefaults;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.mixers.MixerSpec;
import org.kindling.models.mixers.MixerState;
import org.kindling.models.mixers.Mixers;
import org.kindling.models.mixers.TokenMixer;
import org.kindling.models.nn.LayerContext;
import org.kindling.models.nn.Params;
import org.kindling.models.nn.Seqs;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;
import org.kindling.ops.reference.ReferenceDevice;

/** Recurrent decoding of both linear-attention mixers, and how their specs read. */
class LinearAttentionMixerTest {
    private static final int C = 8;
    private Device dev;
    private final List<AutoCloseable> open = new ArrayList<>();

    @BeforeEach
    void setUp() {
        dev = ReferenceDevice.open();
    }

    @AfterEach
    void tearDown() throws Exception {
        for (int i = open.size() - 1; i >= 0; i--) {
            open.get(i).close();
        }
        dev.close();
    }

    private <T extends AutoCloseable> T keep(T t) {
        open.add(t);
        return t;
    }

    private Tensor uniform(long seed, int rows) {
        SplittableRandom r = new SplittableRandom(seed);
        double[] v = new double[rows * C];
        for (int i = 0; i < v.length; i++) {
            v[i] = 2 * r.nextDouble() - 1;
        }
        return keep(dev.allocate(DType.F32, rows, C)).copyFrom(v);
    }

    /**
     * Sequences of 1, 7 and 3 tokens decoded in three batched calls of uneven chunks (some
     * sequences have no rows in a call) give the full forward's outputs, and the state stays the
     * same size however long the context grows.
     */
    private void decodingMatchesForward(MixerSpec spec) {
        Params.Builder pb = new Params.Builder();
        TokenMixer mixer = keep(spec.build(new LayerContext(pb, dev, "mixer", C, 0, 2, 0.5, 9)));
        keep(pb.build(dev, 9));
        int[] lengths = {1, 7, 3};
        int[] cu = {0, 1, 8, 11};
        TokenBatch batch = new TokenBatch(new int[11], cu);
        Seqs seqs = new Seqs(keep(dev.fromInts(cu, cu.length)), keep(dev.fromInts(batch.positions(), batch.size())), cu);
        Tensor x = uniform(4, 11);
        Tensor y = keep(dev.allocate(DType.F32, 11, C));
        mixer.forward(y, x, seqs);
        double[] full = y.toDoubleArray();
        double[] xs = x.toDoubleArray();

        int[][] chunks = {{1, 2, 0}, {0, 3, 2}, {0, 2, 1}};
        int[] done = new int[lengths.length];
        MixerState state = keep(mixer.newState(lengths.length));
        long bytes = state.bytes();
        assertTrue(bytes > 0, "the state reports its bytes");
        for (int[] chunk : chunks) {
            int[] stepCu = new int[chunk.length + 1];
            for (int b = 0; b < chunk.length; b++) {
                stepCu[b + 1] = stepCu[b] + chunk[b];
            }
            double[] stepX = new double[stepCu[chunk.length] * C];
            for (int b = 0; b < chunk.length; b++) {
                System.arraycopy(xs, (cu[b] + done[b]) * C, stepX, stepCu[b] * C, chunk[b] * C);
            }
            try (Tensor sx = dev.allocate(DType.F32, stepCu[chunk.length], C).copyFrom(stepX);
                 Tensor sy = dev.allocate(DType.F32, stepCu[chunk.length], C)) {
                mixer.forwardStep(sy, sx, stepCu, state);
                double[] got = sy.toDoubleArray();
                for (int b = 0; b < chunk.length; b++) {
                    for (int i = 0; i < chunk[b] * C; i++) {
                        int row = cu[b] + done[b] + i / C;
                        assertEquals(full[row * C + i % C], got[stepCu[b] * C + i], 1e-12,
                                spec.type() + ": sequence " + b + " token " + (done[b] + i / C) + " channel " + i % C);
                    }
                    done[b] += chunk[b];
                }
            }
            assertEquals(bytes, state.bytes(), "the state is constant in the context length");
        }
        assertEquals(List.of(1, 7, 3), List.of(done[0], done[1], done[2]));
    }

    @Test
    void linearAttentionDecodesAsItsForward() {
        decodingMatchesForward(new LinearAttentionSpec(2, 1e-6));
    }

    @Test
    void performerDecodesAsItsForward() {
        decodingMatchesForward(new PerformerSpec(2, 6, 1000, 1e-6));
    }

    @Test
    void kernelizedDecodesAsItsForwardWithEveryKernel() {
        for (KernelizedSpec.Kernel kernel : KernelizedSpec.Kernel.values()) {
            decodingMatchesForward(new KernelizedSpec(2, kernel, 3, kernel.mixture ? 2 : 1, 1e-6));
        }
    }

    @Test
    void defaultsFollowTheModel() {
        LayerDefaults d = new LayerDefaults(64, 4, null, 4);
        assertEquals(Map.of("type", "linear", "heads", 4, "eps", 1e-6), Map.copyOf(Mixers.named("linear", d).toMap()));
        // HS = 16: round(16·ln 16) = 44 features.
        assertEquals(new PerformerSpec(4, 44, 1000, 1e-6), Mixers.named("performer", d));
        assertEquals(new PerformerSpec(1, 16, 1000, 1e-6), Mixers.named("performer", new LayerDefaults(4, null, null, 4)),
                "one head without n_head; at least 16 features (4·ln 4 rounds to 6)");
        MixerSpec spec = Mixers.named("performer", d);
        assertEquals(spec, Mixers.read(new ConfigReader("x.yaml", "mixer", spec.toMap()), d), "toMap reads back");
    }

    private static IllegalArgumentException bad(String key, Object value, String type) {
        Map<String, Object> m = ConfigReader.ordered();
        m.put("type", type);
        m.put(key, value);
        return assertThrows(IllegalArgumentException.class,
                () -> Mixers.read(new ConfigReader("model.yaml", "mixer[1]", m), new LayerDefaults(12, 3, null, 4)));
    }

    @Test
    void badKeysAreNamed() {
        assertEquals("model.yaml: mixer[1].heads = 5 does not divide d_model 12", bad("heads", 5, "linear").getMessage());
        assertTrue(bad("eps", 0, "linear").getMessage().startsWith("model.yaml: mixer[1].eps must be a finite number above 0"));
        assertTrue(bad("eps", 1e-50, "performer").getMessage().startsWith("model.yaml: mixer[1].eps"));
        assertEquals("model.yaml: mixer[1].features must be at least 1, got 0", bad("features", 0, "performer").getMessage());
        assertEquals("model.yaml: mixer[1].redraw must be at least 0, got -1", bad("redraw", -1, "performer").getMessage());
        assertTrue(bad("features", 8, "linear").getMessage().contains("unknown key mixer[1].features"));
    }
}
