package org.kindling.ops.cpu;

import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.IntVector;
import jdk.incubator.vector.VectorMask;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorSpecies;
import org.kindling.ops.Reference;

/**
 * SIMD helpers for the fused kernels. {@code exp} is a Cephes-style polynomial built only from
 * IEEE add, multiply and fused multiply-add, so its scalar and vector forms agree bit for bit and
 * do not change when the JIT compiles them (the Vector API's own {@code EXP} falls back to
 * {@code Math.exp} before compilation and to SVML after, which would break determinism). Sums are
 * reduced lane by lane in a fixed order for the same reason.
 */
final class VecMath {
    static final VectorSpecies<Float> F = FloatVector.SPECIES_PREFERRED;
    static final int LANES = F.length();

    private static final float LOG2E = 1.44269504088896341f;
    private static final float LN2_HI = 0.693359375f;
    private static final float LN2_LO = -2.12194440e-4f;
    private static final float MAGIC = 12582912f; // 1.5·2^23: adding it rounds to an integer
    private static final int MAGIC_BITS = Float.floatToRawIntBits(MAGIC);
    /** Below this exp underflows past the smallest normal float; the result is flushed to 0. */
    private static final float LO = -87.3f;
    /** Above this the result is reported as +∞ (the true value is within a factor 2 of overflow). */
    private static final float HI = 88f;
    private static final float P0 = 1.9875691500e-4f;
    private static final float P1 = 1.3981999507e-3f;
    private static final float P2 = 8.3334519073e-3f;
    private static final float P3 = 4.1665795894e-2f;
    private static final float P4 = 1.6666665459e-1f;
    private static final float P5 = 5.0000001201e-1f;

    private VecMath() {
    }

    /** e^x within 2 ulp for −87.3 ≤ x ≤ 88; 0 below, +∞ above, NaN for NaN. */
    static float exp(float x) {
        if (x < LO) {
            return 0f;
        }
        if (x > HI) {
            return Float.POSITIVE_INFINITY;
        }
        float t = x * LOG2E + MAGIC;
        float n = t - MAGIC;
        int ni = Float.floatToRawIntBits(t) - MAGIC_BITS;
        float r = Math.fma(n, -LN2_HI, x);
        r = Math.fma(n, -LN2_LO, r);
        float p = Math.fma(P0, r, P1);
        p = Math.fma(p, r, P2);
        p = Math.fma(p, r, P3);
        p = Math.fma(p, r, P4);
        p = Math.fma(p, r, P5);
        float y = Math.fma(p, r * r, r) + 1f;
        return y * Float.intBitsToFloat((ni + 127) << 23);
    }

    /** The lane-wise twin of {@link #exp(float)}. */
    static FloatVector exp(FloatVector x) {
        VectorMask<Float> under = x.lt(LO);
        VectorMask<Float> over = x.compare(VectorOperators.GT, HI);
        FloatVector xc = x.min(HI).max(LO);
        FloatVector t = xc.mul(LOG2E).add(MAGIC);
        FloatVector n = t.sub(MAGIC);
        IntVector ni = t.reinterpretAsInts().sub(MAGIC_BITS);
        FloatVector r = n.lanewise(VectorOperators.FMA, -LN2_HI, xc);
        r = n.lanewise(VectorOperators.FMA, -LN2_LO, r);
        FloatVector p = FloatVector.broadcast(F, P0).lanewise(VectorOperators.FMA, r, FloatVector.broadcast(F, P1));
        p = p.lanewise(VectorOperators.FMA, r, FloatVector.broadcast(F, P2));
        p = p.lanewise(VectorOperators.FMA, r, FloatVector.broadcast(F, P3));
        p = p.lanewise(VectorOperators.FMA, r, FloatVector.broadcast(F, P4));
        p = p.lanewise(VectorOperators.FMA, r, FloatVector.broadcast(F, P5));
        FloatVector y = p.lanewise(VectorOperators.FMA, r.mul(r), r).add(1f);
        FloatVector pow2 = ni.add(127).lanewise(VectorOperators.LSHL, 23).reinterpretAsFloats();
        return y.mul(pow2).blend(0f, under).blend(Float.POSITIVE_INFINITY, over);
    }

    private static final float GELU_SCALE = (float) Reference.GELU_SCALE;
    private static final float GELU_CUBE = (float) Reference.GELU_CUBE;

    /*
     * GELU(x) = ½·x·(1 + tanh u), u = √(2/π)·(x + 0.044715·x³). With e = exp(2u):
     * 1 − tanh u = a = 2/(e+1) and 1 + tanh u = b = 2e/(e+1), so 1 − tanh² u = a·b. Computing b as
     * 2 − a only where a < 1 (and as e·a elsewhere) avoids the cancellation that 1 ± tanh would suffer.
     */

    private static float onePlusTanh(float e, float a) {
        return e > 1f ? 2f - a : e * a;
    }

    /** Elements per block: the gelu passes stay in L1 and each pass is a loop the JIT fully vectorizes. */
    private static final int BLOCK = 512;

    /** e[oe + i] = exp(2u) for the block x[ox .. ox+n), u = √(2/π)·(x + 0.044715·x³). */
    private static void geluExp(float[] e, int oe, float[] x, int ox, int n) {
        int i = 0;
        for (; i + LANES <= n; i += LANES) {
            FloatVector v = FloatVector.fromArray(F, x, ox + i);
            v.mul(v.mul(v).mul(GELU_CUBE).add(1f)).mul(2f * GELU_SCALE).intoArray(e, oe + i);
        }
        for (; i < n; i++) {
            float v = x[ox + i];
            e[oe + i] = (v * ((v * v) * GELU_CUBE + 1f)) * (2f * GELU_SCALE);
        }
        expShift(e, oe, n, 0f);
    }

    /** out[i] = GELU(x[i]), tanh form, for i in [0, n). */
    static void gelu(float[] out, int oo, float[] x, int ox, int n) {
        gelu(out, oo, x, ox, n, null, 0);
    }

    /**
     * out[i] = GELU(x[i]) and, when keep is not null, keep[ok + i] = exp(2u) of x[i]: the
     * intermediate {@link #geluBackward} then reads instead of recomputing it.
     */
    static void gelu(float[] out, int oo, float[] x, int ox, int n, float[] keep, int ok) {
        float[] scratch = keep == null ? new float[Math.min(n, BLOCK)] : null;
        for (int b = 0; b < n; b += BLOCK) {
            int len = Math.min(BLOCK, n - b);
            float[] e = keep == null ? scratch : keep;
            int eo = keep == null ? 0 : ok + b;
            geluExp(e, eo, x, ox + b, len);
            int i = 0;
            for (; i + LANES <= len; i += LANES) {
                FloatVector v = FloatVector.fromArray(F, x, ox + b + i);
                FloatVector ev = FloatVector.fromArray(F, e, eo + i);
                FloatVector a = FloatVector.broadcast(F, 2f).div(ev.add(1f));
                FloatVector opt = ev.mul(a).blend(FloatVector.broadcast(F, 2f).sub(a), ev.compare(VectorOperators.GT, 1f));
                v.mul(0.5f).mul(opt).intoArray(out, oo + b + i);
            }
            for (; i < len; i++) {
                float a = 2f / (e[eo + i] + 1f);
                out[oo + b + i] = (x[ox + b + i] * 0.5f) * onePlusTanh(e[eo + i], a);
            }
        }
    }

    /** dx[i] += GELU'(x[i])·dy[i] for i in [0, n). */
    static void geluBackward(float[] dx, int odx, float[] dy, int ody, float[] x, int ox, int n) {
        geluBackward(dx, odx, dy, ody, x, ox, n, null, 0);
    }

    /**
     * dx[i] += GELU'(x[i])·dy[i]; with kept not null, exp(2u) is read from kept[ok + i] (what
     * {@link #gelu} kept), else recomputed: the same bits either way.
     */
    static void geluBackward(float[] dx, int odx, float[] dy, int ody, float[] x, int ox, int n, float[] kept, int ok) {
        float[] scratch = kept == null ? new float[Math.min(n, BLOCK)] : null;
        for (int b = 0; b < n; b += BLOCK) {
            int len = Math.min(BLOCK, n - b);
            float[] e = kept == null ? scratch : kept;
            int eo = kept == null ? 0 : ok + b;
            if (kept == null) {
                geluExp(e, eo, x, ox + b, len);
            }
            int i = 0;
            for (; i + LANES <= len; i += LANES) {
                FloatVector v = FloatVector.fromArray(F, x, ox + b + i);
                FloatVector ev = FloatVector.fromArray(F, e, eo + i);
                FloatVector a = FloatVector.broadcast(F, 2f).div(ev.add(1f));
                FloatVector opt = ev.mul(a).blend(FloatVector.broadcast(F, 2f).sub(a), ev.compare(VectorOperators.GT, 1f));
                FloatVector inner = v.mul(v).mul(3f * GELU_CUBE).add(1f).mul(GELU_SCALE);
                FloatVector grad = opt.mul(0.5f).add(v.mul(0.5f).mul(a.mul(opt)).mul(inner));
                FloatVector.fromArray(F, dx, odx + b + i).add(grad.mul(FloatVector.fromArray(F, dy, ody + b + i)))
                        .intoArray(dx, odx + b + i);
            }
            for (; i < len; i++) {
                float v = x[ox + b + i];
                float a = 2f / (e[eo + i] + 1f);
                float opt = onePlusTanh(e[eo + i], a);
                float inner = ((v * v) * (3f * GELU_CUBE) + 1f) * GELU_SCALE;
                float grad = opt * 0.5f + ((v * 0.5f) * (a * opt)) * inner;
                dx[odx + b + i] = dx[odx + b + i] + grad * dy[ody + b + i];
            }
        }
    }

    /** Largest of x[off .. off+n), or −∞ when n = 0. */
    static float max(float[] x, int off, int n) {
        int i = 0;
        float m = Float.NEGATIVE_INFINITY;
        if (n >= LANES) {
            FloatVector acc = FloatVector.fromArray(F, x, off);
            for (i = LANES; i + LANES <= n; i += LANES) {
                acc = acc.max(FloatVector.fromArray(F, x, off + i));
            }
            m = acc.reduceLanes(VectorOperators.MAX);
        }
        for (; i < n; i++) {
            m = Math.max(m, x[off + i]);
        }
        return m;
    }

    /** x[i] = exp(x[i] − shift) in place for i in [off, off+n); returns their sum. */
    static float expShiftSum(float[] x, int off, int n, float shift) {
        int i = 0;
        float sum = 0f;
        if (n >= LANES) {
            FloatVector acc = FloatVector.zero(F);
            for (; i + LANES <= n; i += LANES) {
                FloatVector e = exp(FloatVector.fromArray(F, x, off + i).sub(shift));
                e.intoArray(x, off + i);
                acc = acc.add(e);
            }
            sum = sumLanes(acc);
        }
        for (; i < n; i++) {
            float e = exp(x[off + i] - shift);
            x[off + i] = e;
            sum += e;
        }
        return sum;
    }

    /** x[i] = exp(x[i] − shift) in place for i in [off, off+n). */
    static void expShift(float[] x, int off, int n, float shift) {
        int i = 0;
        for (; i + LANES <= n; i += LANES) {
            exp(FloatVector.fromArray(F, x, off + i).sub(shift)).intoArray(x, off + i);
        }
        for (; i < n; i++) {
            x[off + i] = exp(x[off + i] - shift);
        }
    }

    /** x[i] *= f for i in [off, off+n). */
    static void scale(float[] x, int off, int n, float f) {
        int i = 0;
        for (; i + LANES <= n; i += LANES) {
            FloatVector.fromArray(F, x, off + i).mul(f).intoArray(x, off + i);
        }
        for (; i < n; i++) {
            x[off + i] *= f;
        }
    }

    /** p[i] = p[i]·(d[i] − c) in place: the softmax backward step dS = P ⊙ (dP − D). */
    static void mulShifted(float[] p, int po, float[] d, int dOff, int n, float c) {
        int i = 0;
        for (; i + LANES <= n; i += LANES) {
            FloatVector pv = FloatVector.fromArray(F, p, po + i);
            pv.mul(FloatVector.fromArray(F, d, dOff + i).sub(c)).intoArray(p, po + i);
        }
        for (; i < n; i++) {
            p[po + i] = p[po + i] * (d[dOff + i] - c);
        }
    }

    /** Σ x[off .. off+n) in float lanes, reduced in a fixed order. */
    static float sum(float[] x, int off, int n) {
        int i = 0;
        FloatVector acc = FloatVector.zero(F);
        for (; i + LANES <= n; i += LANES) {
            acc = acc.add(FloatVector.fromArray(F, x, off + i));
        }
        float s = sumLanes(acc);
        for (; i < n; i++) {
            s += x[off + i];
        }
        return s;
    }

    /** Σ (x − mu)² over x[off .. off+n). */
    static float sumSquaredDeviations(float[] x, int off, int n, float mu) {
        int i = 0;
        FloatVector acc = FloatVector.zero(F);
        for (; i + LANES <= n; i += LANES) {
            FloatVector d = FloatVector.fromArray(F, x, off + i).sub(mu);
            acc = d.lanewise(VectorOperators.FMA, d, acc);
        }
        float s = sumLanes(acc);
        for (; i < n; i++) {
            float d = x[off + i] - mu;
            s = Math.fma(d, d, s);
        }
        return s;
    }

    /** out = (x − mu)·rs·w + b over one row of n channels. */
    static void normalize(float[] out, int oo, float[] x, int ox, int n, float mu, float rs, float[] w, int ow, float[] b, int ob) {
        int i = 0;
        for (; i + LANES <= n; i += LANES) {
            FloatVector xh = FloatVector.fromArray(F, x, ox + i).sub(mu).mul(rs);
            xh.lanewise(VectorOperators.FMA, FloatVector.fromArray(F, w, ow + i), FloatVector.fromArray(F, b, ob + i))
                    .intoArray(out, oo + i);
        }
        for (; i < n; i++) {
            out[oo + i] = Math.fma((x[ox + i] - mu) * rs, w[ow + i], b[ob + i]);
        }
    }

    /** One row of LayerNorm's input gradient: dx += (w·dy − mean(w·dy) − x̂·mean(w·dy·x̂))·rs. */
    static void layerNormRowBackward(float[] dx, int odx, float[] dy, int ody, float[] x, int ox, float[] w, int ow, int n,
                                     float mu, float rs) {
        int i = 0;
        FloatVector accDn = FloatVector.zero(F);
        FloatVector accDnX = FloatVector.zero(F);
        for (; i + LANES <= n; i += LANES) {
            FloatVector dn = FloatVector.fromArray(F, w, ow + i).mul(FloatVector.fromArray(F, dy, ody + i));
            FloatVector xh = FloatVector.fromArray(F, x, ox + i).sub(mu).mul(rs);
            accDn = accDn.add(dn);
            accDnX = dn.lanewise(VectorOperators.FMA, xh, accDnX);
        }
        float sumDn = sumLanes(accDn);
        float sumDnX = sumLanes(accDnX);
        int tail = i;
        for (; i < n; i++) {
            float dn = w[ow + i] * dy[ody + i];
            float xh = (x[ox + i] - mu) * rs;
            sumDn += dn;
            sumDnX = Math.fma(dn, xh, sumDnX);
        }
        float meanDn = sumDn / n;
        float meanDnX = sumDnX / n;
        for (i = 0; i + LANES <= n; i += LANES) {
            FloatVector dn = FloatVector.fromArray(F, w, ow + i).mul(FloatVector.fromArray(F, dy, ody + i));
            FloatVector xh = FloatVector.fromArray(F, x, ox + i).sub(mu).mul(rs);
            FloatVector g = dn.sub(meanDn).sub(xh.mul(meanDnX)).mul(rs);
            FloatVector.fromArray(F, dx, odx + i).add(g).intoArray(dx, odx + i);
        }
        for (i = tail; i < n; i++) {
            float dn = w[ow + i] * dy[ody + i];
            float xh = (x[ox + i] - mu) * rs;
            dx[odx + i] = dx[odx + i] + ((dn - meanDn) - xh * meanDnX) * rs;
        }
    }

    /** sw += dy·x̂ and sb += dy over a run of n channels of one row. */
    static void accumulateAffineGrads(float[] sw, float[] sb, float[] dy, int ody, float[] x, int ox, int n, float mu, float rs) {
        int i = 0;
        for (; i + LANES <= n; i += LANES) {
            FloatVector g = FloatVector.fromArray(F, dy, ody + i);
            FloatVector xh = FloatVector.fromArray(F, x, ox + i).sub(mu).mul(rs);
            g.lanewise(VectorOperators.FMA, xh, FloatVector.fromArray(F, sw, i)).intoArray(sw, i);
            FloatVector.fromArray(F, sb, i).add(g).intoArray(sb, i);
        }
        for (; i < n; i++) {
            float g = dy[ody + i];
            sw[i] = Math.fma(g, (x[ox + i] - mu) * rs, sw[i]);
            sb[i] += g;
        }
    }

    /** AdamW over a run of n elements (see {@link org.kindling.ops.AdamW}); PyTorch's operation order. */
    static void adamW(float[] p, int op, float[] g, int og, float[] m, int om, float[] v, int ov, int n, float b1, float b2,
                      float decay, float stepSize, float bc2Sqrt, float eps, float gradScale) {
        int i = 0;
        for (; i + LANES <= n; i += LANES) {
            FloatVector gi = FloatVector.fromArray(F, g, og + i).mul(gradScale);
            FloatVector mi = FloatVector.fromArray(F, m, om + i).mul(b1).add(gi.mul(1f - b1));
            FloatVector vi = FloatVector.fromArray(F, v, ov + i).mul(b2).add(gi.mul(gi).mul(1f - b2));
            mi.intoArray(m, om + i);
            vi.intoArray(v, ov + i);
            FloatVector denom = vi.sqrt().div(bc2Sqrt).add(eps);
            FloatVector.fromArray(F, p, op + i).mul(decay).sub(mi.mul(stepSize).div(denom)).intoArray(p, op + i);
        }
        for (; i < n; i++) {
            float gi = g[og + i] * gradScale;
            float mi = m[om + i] * b1 + gi * (1f - b1);
            float vi = v[ov + i] * b2 + (gi * gi) * (1f - b2);
            m[om + i] = mi;
            v[ov + i] = vi;
            float denom = (float) Math.sqrt(vi) / bc2Sqrt + eps;
            p[op + i] = p[op + i] * decay - (mi * stepSize) / denom;
        }
    }

    /** Σ a[i]·b[i] in double, in index order. */
    static double dot(float[] a, int ao, float[] b, int bo, int n) {
        double s = 0;
        for (int i = 0; i < n; i++) {
            s += (double) a[ao + i] * b[bo + i];
        }
        return s;
    }

    /** Σ x[i] over [off, off+n), in double in index order (a step's loss sum: accuracy over speed). */
    static double sumDouble(float[] x, int off, int n) {
        double s = 0;
        for (int i = 0; i < n; i++) {
            s += x[off + i];
        }
        return s;
    }

    /**
     * Σ x[i]² over [off, off+n): squares summed lane-wise in fp32 over runs of 16 vectors (so no
     * lane sums more than 16 terms), each run's lanes then added in order in double.
     */
    static double sumOfSquares(float[] x, int off, int n) {
        float[] lanes = new float[LANES];
        int run = 16 * LANES;
        double s = 0;
        int i = 0;
        for (; i + run <= n; i += run) {
            FloatVector acc = FloatVector.zero(F);
            for (int j = i; j < i + run; j += LANES) {
                FloatVector v = FloatVector.fromArray(F, x, off + j);
                acc = v.lanewise(VectorOperators.FMA, v, acc);
            }
            acc.intoArray(lanes, 0);
            for (float l : lanes) {
                s += l;
            }
        }
        for (; i < n; i++) {
            double v = x[off + i];
            s += v * v;
        }
        return s;
    }

    /** dst[i] += src[i]. */
    static void addTo(float[] dst, int dOff, float[] src, int sOff, int n) {
        int i = 0;
        for (; i + LANES <= n; i += LANES) {
            FloatVector.fromArray(F, dst, dOff + i).add(FloatVector.fromArray(F, src, sOff + i)).intoArray(dst, dOff + i);
        }
        for (; i < n; i++) {
            dst[dOff + i] += src[sOff + i];
        }
    }

    private static float sumLanes(FloatVector v) {
        float[] lanes = new float[LANES];
        v.intoArray(lanes, 0);
        float s = 0f;
        for (float l : lanes) {
            s += l;
        }
        return s;
    }
}
