package org.kindling.models.mixers.ssm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.kindling.models.config.ConfigReader;
import org.kindling.models.config.LayerDefaults;
import org.kindling.models.mixers.MixerSpec;
import org.kindling.models.mixers.MixerState;
import org.kindling.models.mixers.Mixers;
import org.kindling.models.mixers.TokenMixer;
import org.kindling.models.nn.LayerContext;
import org.kindling.models.nn.Param;
import org.kindling.models.nn.ParamGroup;
import org.kindling.models.nn.Params;
import org.kindling.models.nn.Seqs;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;
import org.kindling.ops.cpu.CpuDevice;

/** S4D's and H3's initialisations, parameter groups, recurrent decoding and FFT blocking. */
class SsmMixerTest {
    private static final LayerDefaults DEFAULTS = new LayerDefaults(8, 2, null, 4);
    private Device dev;
    private final List<AutoCloseable> open = new ArrayList<>();

    @BeforeEach
    void setUp() {
        dev = CpuDevice.open(1);
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

    /** A mixer of width c and its parameters, built from the model seed 7. */
    private record Built(TokenMixer mixer, Params params) {
    }

    private Built build(MixerSpec spec, int c) {
        Params.Builder pb = new Params.Builder();
        TokenMixer m = keep(spec.build(new LayerContext(pb, dev, "mixer", c, 0, 2, 0.3, 7)));
        return new Built(m, keep(pb.build(dev, 7)));
    }

    private static MixerSpec read(Map<String, Object> keys) {
        Map<String, Object> m = ConfigReader.ordered();
        m.putAll(keys);
        return Mixers.read(new ConfigReader("test.yaml", "mixer", m), DEFAULTS);
    }

    @Test
    void s4dLinInitialisation() {
        S4dSpec spec = (S4dSpec) read(Map.of("type", "s4d", "d_state", 16, "dt_min", 0.01, "dt_max", 0.2));
        Params p = build(spec, 8).params();
        float[] aIm = p.get("mixer.a_im").value().toFloatArray();
        float[] aRe = p.get("mixer.a_re").value().toFloatArray();
        assertEquals(8 * 8, aIm.length);
        for (int ch = 0; ch < 8; ch++) {
            for (int n = 0; n < 8; n++) {
                assertEquals(Math.PI * n, aIm[ch * 8 + n], 1e-5, "Im A[" + ch + ", " + n + "]");
                assertEquals(-0.5, -Math.exp(aRe[ch * 8 + n]), 1e-6, "Re A[" + ch + ", " + n + "]");
            }
        }
        checkLogDt(p.get("mixer.log_dt").value().toFloatArray(), 0.01, 0.2);
        checkComplexNormal(p.get("mixer.c").value().toFloatArray());
    }

    @Test
    void s4dInvInitialisation() {
        S4dSpec spec = (S4dSpec) read(Map.of("type", "s4d", "d_state", 64, "init", "inv"));
        float[] aIm = build(spec, 8).params().get("mixer.a_im").value().toFloatArray();
        for (int ch = 0; ch < 8; ch++) {
            for (int n = 0; n < 32; n++) {
                double want = 64 / Math.PI * (64.0 / (2 * n + 1) - 1);
                assertEquals(want, aIm[ch * 32 + n], 1e-4 * Math.abs(want), "Im A[" + ch + ", " + n + "]");
            }
        }
        // The first mode sits at N/π·(N − 1): S4D-Inv spreads its frequencies far beyond Lin's π·n.
        assertEquals(64 / Math.PI * 63, aIm[0], 1e-3);
    }

    /** log dt uniform in [log dtMin, log dtMax): in range, and spread over it. */
    private static void checkLogDt(float[] logDt, double dtMin, double dtMax) {
        double lo = Double.MAX_VALUE;
        double hi = -Double.MAX_VALUE;
        for (float v : logDt) {
            assertTrue(v >= Math.log(dtMin) - 1e-6 && v < Math.log(dtMax) + 1e-6, "log dt " + v + " outside its range");
            lo = Math.min(lo, v);
            hi = Math.max(hi, v);
        }
        assertTrue(hi - lo > 0.3 * (Math.log(dtMax) - Math.log(dtMin)), "log dt not spread: " + lo + " … " + hi);
    }

    /** C̃ ~ N(0, 1/2) in each of the real and imaginary parts. */
    private static void checkComplexNormal(float[] c) {
        double[] sq = new double[2];
        for (int i = 0; i < c.length; i++) {
            sq[i % 2] += c[i] * c[i];
        }
        for (double s : sq) {
            double var = s / (c.length / 2.0);
            assertTrue(var > 0.3 && var < 0.75, "variance of a part of C is " + var + ", want 1/2");
        }
    }

    @Test
    void dynamicsTrainInTheirOwnGroupWithoutDecay() {
        ParamGroup dynamics = new ParamGroup(false, 0.25);
        Params s4d = build(read(Map.of("type", "s4d", "dynamics_lr", 0.25)), 8).params();
        Params h3 = build(read(Map.of("type", "h3", "dynamics_lr", 0.25, "heads", 4)), 8).params();
        for (String name : List.of("mixer.log_dt", "mixer.a_re", "mixer.a_im")) {
            assertEquals(dynamics, s4d.get(name).group(), name);
        }
        for (String name : List.of("mixer.ssm.log_dt", "mixer.ssm.a_re", "mixer.ssm.a_im")) {
            assertEquals(dynamics, h3.get(name).group(), name);
        }
        assertEquals(ParamGroup.DECAY, s4d.get("mixer.c").group());
        assertEquals(ParamGroup.DECAY, h3.get("mixer.shift").group());
        assertTrue(s4d.segments().stream().anyMatch(seg -> seg.group().equals(dynamics)), "no segment of the dynamics group");
        // H3's diagonal SSM runs over NH·HS·HS = 8·2 channels.
        assertEquals(List.of(16, 32), List.of(h3.get("mixer.ssm.a_im").value().dim(0), h3.get("mixer.ssm.a_im").value().dim(1)));
        for (Param p : h3.list()) {
            assertTrue(p.group().decay() || !p.name().endsWith(".weight"), p.name() + " is a matrix without decay");
        }
    }

    @Test
    void configErrorsNameTheKey() {
        assertThrows(IllegalArgumentException.class, () -> read(Map.of("type", "s4d", "d_state", 5)), "odd d_state");
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> read(Map.of("type", "s4d", "init", "legs")));
        assertTrue(e.getMessage().contains("test.yaml") && e.getMessage().contains("mixer.init"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> read(Map.of("type", "s4d", "dt_min", 0.1, "dt_max", 0.01)));
        assertTrue(e.getMessage().contains("mixer.dt_max"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> read(Map.of("type", "h3", "heads", 3)));
        assertTrue(e.getMessage().contains("mixer.heads"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> read(Map.of("type", "h3", "dynamics_lr", 0)));
        assertTrue(e.getMessage().contains("mixer.dynamics_lr"), e.getMessage());
        // A model-wide key is not a mixer key.
        e = assertThrows(IllegalArgumentException.class, () -> read(Map.of("type", "h3", "d_model", 8)));
        assertTrue(e.getMessage().contains("unknown key mixer.d_model"), e.getMessage());
    }

    @Test
    void defaultsRoundTrip() {
        for (String type : List.of("s4d", "h3")) {
            MixerSpec spec = Mixers.named(type, DEFAULTS);
            Map<String, Object> m = spec.toMap();
            assertEquals("type", m.keySet().iterator().next());
            assertEquals(type, m.get("type"));
            assertEquals(spec, Mixers.read(new ConfigReader("again", "mixer", m), DEFAULTS));
        }
        assertEquals(new S4dSpec(64, "lin", 1e-3, 1e-1, 0.1, 1024), Mixers.named("s4d", DEFAULTS));
        assertEquals(new H3Spec(64, 8, 0.1, 1024), Mixers.named("h3", DEFAULTS));
    }

    private Seqs seqs(int... lengths) {
        int[] cu = new int[lengths.length + 1];
        for (int i = 0; i < lengths.length; i++) {
            cu[i + 1] = cu[i] + lengths[i];
        }
        int[] pos = new int[cu[lengths.length]];
        for (int s = 0; s < lengths.length; s++) {
            for (int t = cu[s]; t < cu[s + 1]; t++) {
                pos[t] = t - cu[s];
            }
        }
        return new Seqs(keep(dev.fromInts(cu, cu.length)), keep(dev.fromInts(pos, pos.length)), cu);
    }

    private Tensor input(long seed, int t, int c) {
        SplittableRandom r = new SplittableRandom(seed);
        float[] v = new float[t * c];
        for (int i = 0; i < v.length; i++) {
            v[i] = (float) (2 * r.nextDouble() - 1);
        }
        return keep(dev.fromFloats(v, t, c));
    }

    private float[] full(TokenMixer m, Tensor x, Seqs s) {
        Tensor y = keep(dev.allocate(DType.F32, x.rows(), x.cols()));
        m.forward(y, x, s);
        return y.toFloatArray();
    }

    private static void assertClose(String what, float[] want, float[] got, int from, double rtol) {
        double scale = 0;
        for (float v : want) {
            scale = Math.max(scale, Math.abs(v));
        }
        for (int i = 0; i < got.length; i++) {
            if (!(Math.abs(got[i] - want[from + i]) <= rtol * scale + 1e-6)) {
                fail(what + ": element " + (from + i) + " is " + got[i] + ", want " + want[from + i] + " (scale " + scale + ")");
            }
        }
    }

    /**
     * Decodes sequences of 1 and 97 tokens through {@code forwardStep}: both prefilled together at
     * once, and again with 40 tokens of the long one prefilled and the rest one by one while the
     * short one has no new rows; every row must match the full forward.
     */
    private void decodingMatchesForward(MixerSpec spec, int c) {
        TokenMixer m = build(spec, c).mixer();
        Seqs s = seqs(1, 97);
        Tensor x = input(3, 98, c);
        float[] want = full(m, x, s);
        try (MixerState st = m.newState(2)) {
            Tensor y = keep(dev.allocate(DType.F32, 98, c));
            m.forwardStep(y, x, new int[] {0, 1, 98}, st);
            assertClose(spec.type() + " prefill", want, y.toFloatArray(), 0, 2e-5);
        }
        try (MixerState st = m.newState(2)) {
            long bytes = -1;
            Tensor y = keep(dev.allocate(DType.F32, 41, c));
            m.forwardStep(y, x.view(0, 41, c), new int[] {0, 1, 41}, st);
            assertClose(spec.type() + " partial prefill", want, y.toFloatArray(), 0, 2e-5);
            Tensor y1 = keep(dev.allocate(DType.F32, 1, c));
            for (int t = 41; t < 98; t++) {
                m.forwardStep(y1, x.view(t * c, 1, c), new int[] {0, 0, 1}, st);
                assertClose(spec.type() + " step " + t, want, y1.toFloatArray(), t * c, 2e-5);
                // A recurrent state does not grow with the context.
                assertTrue(bytes < 0 || st.bytes() == bytes, "state grew from " + bytes + " to " + st.bytes());
                bytes = st.bytes();
            }
        }
    }

    @Test
    void s4dDecodingMatchesTheFullForward() {
        decodingMatchesForward(new S4dSpec(16, "lin", 1e-3, 1e-1, 0.1, 16), 8);
        decodingMatchesForward(new S4dSpec(16, "inv", 1e-2, 1e-1, 0.1, 1024), 8);
    }

    @Test
    void h3DecodingMatchesTheFullForward() {
        decodingMatchesForward(new H3Spec(8, 2, 0.1, 16), 8);
        decodingMatchesForward(new H3Spec(8, 8, 0.1, 1024), 8);
        decodingMatchesForward(new H3Spec(4, 1, 0.1, 32), 4);
    }

    /** Blocks of 16 tokens reach later ones through the carried SSM state: the same result as one FFT block. */
    private void blockingIsExact(MixerSpec small, MixerSpec large, int c) {
        Seqs s = seqs(100, 37, 1);
        Tensor x = input(5, 138, c);
        float[] a = full(build(small, c).mixer(), x, s);
        float[] b = full(build(large, c).mixer(), x, s);
        assertClose(small.type() + " block 16 vs 1024", b, a, 0, 1e-5);
    }

    @Test
    void s4dBlock16EqualsOneBlock() {
        blockingIsExact(new S4dSpec(32, "lin", 1e-3, 1e-1, 0.1, 16), new S4dSpec(32, "lin", 1e-3, 1e-1, 0.1, 1024), 8);
    }

    @Test
    void h3Block16EqualsOneBlock() {
        blockingIsExact(new H3Spec(16, 2, 0.1, 16), new H3Spec(16, 2, 0.1, 1024), 8);
    }
}
