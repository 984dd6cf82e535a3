package org.kindling.ops;

import java.util.Arrays;
import jdk.incubator.vector.DoubleVector;
import jdk.incubator.vector.VectorSpecies;

/**
 * Skeinformer's sketched softmax attention (Chen et al. 2022, "Sketching as a Tool for
 * Understanding and Accelerating Self-attention for Long Sequences") over packed sequences, q, k,
 * v and out [T, NH·HS] as {@link Attention} lays them out, scores scaled by 1/√HS.
 *
 * <p>Bidirectional (the paper's mode), per sequence and head: {@code pilot} query rows drawn
 * uniformly get their exact attention rows; column j is kept with probability ∝ (the pilot rows'
 * column norm of the attention matrix) × ‖v_j‖, {@code samples} columns drawn without
 * replacement; every other row attends only its sampled columns, and with adaptive row
 * normalisation each unsampled column is modelled by exp(mean sampled logit) with its true value
 * row, so the row's normaliser counts every column; pilot rows keep their exact outputs.
 *
 * <p>Causal (our own extension, not in the paper): tiles of {@code samples} rows; a row attends its
 * own tile's columns up to itself exactly and a sketch of the columns before its tile, drawn ∝
 * ‖k_j‖·‖v_j‖ (a pilot would need later rows), with the same adaptive normalisation. A row's output
 * depends only on its prefix, so decoding from a KV cache gives the full forward's rows.
 *
 * <p>Draws come from {@link Seeds} streams of (seed, head, sequence, stream) — (seed, head, tile)
 * when causal, so they do not depend on how sequences are packed — and are redrawn bit-identically
 * from the same inputs by the backward pass, which treats them as constants.
 *
 * @param heads heads NH
 * @param headDim HS
 * @param samples columns sampled per head (and the causal tile)
 * @param pilot pilot query rows per head (bidirectional only)
 * @param causal the causal variant
 * @param adaptive adaptive row normalisation; without it a row is normalised over its sampled columns alone
 */
public record Skein(int heads, int headDim, int samples, int pilot, boolean causal, boolean adaptive) {
    private static final VectorSpecies<Double> D4 = DoubleVector.SPECIES_256;

    public Skein {
        if (heads < 1 || headDim < 1 || samples < 1 || pilot < 0) {
            throw new IllegalArgumentException("skein needs heads, head_dim and samples ≥ 1 and pilot ≥ 0, got heads="
                    + heads + " head_dim=" + headDim + " samples=" + samples + " pilot=" + pilot);
        }
    }

    private int width() {
        return heads * headDim;
    }

    /** Checks that every operand is [rows, NH·HS] F32 with the given row counts. */
    void check(int rows, int keyRows, Tensor out, Tensor q, Tensor k, Tensor v) {
        for (Tensor t : new Tensor[] {out, q}) {
            checkShape(t, rows);
        }
        checkShape(k, keyRows);
        checkShape(v, keyRows);
    }

    /**
     * Checks that every operand is F32 [T, NH·HS] for the T rows that cuSeqlens packs, and gives
     * its host offsets (not to be modified), for backends that compute the sketch themselves.
     */
    public int[] packed(Varlen cuSeqlens, Tensor... operands) {
        for (Tensor t : operands) {
            checkShape(t, cuSeqlens.tokens());
        }
        return cuSeqlens.host();
    }

    private void checkShape(Tensor t, int rows) {
        if (t.dtype() != DType.F32 || t.numel() != rows * width()) {
            throw new IllegalArgumentException("skein operand must be F32 [" + rows + ", " + width() + "], got " + t);
        }
    }

    /**
     * The sketched rows of one head of one sequence: for each query row, the columns it attends
     * (the first {@code sketched[r]} of them sampled, the rest exact), and the adaptive model
     * term's count of unsampled columns and the sum of their value rows [HS]. Rows sharing a draw
     * share its group: the draw's columns, the end of the columns it was drawn from, and the
     * backward's sum over those rows of ∂L/∂R (−1: an exact pilot row).
     */
    private record Plan(int[][] cols, int[] sketched, int[] unsampled, double[][] rest, int[] group,
                        java.util.List<int[]> groupSample, java.util.List<Integer> groupEnd, java.util.List<double[]> groupGrad) {
        int add(int[] sample, int end, int hs) {
            groupSample.add(sample);
            groupEnd.add(end);
            groupGrad.add(new double[hs]);
            return groupSample.size() - 1;
        }
    }

    private Plan newPlan(int count) {
        return new Plan(new int[count][], new int[count], new int[count], new double[count][], new int[count],
                new java.util.ArrayList<>(), new java.util.ArrayList<>(), new java.util.ArrayList<>());
    }

    /** dv of each group's unsampled columns += the group's summed ∂L/∂R: once per draw, not per row. */
    private void addUnsampled(double[] dv, int keyBase, Plan p, int h) {
        int hs = headDim;
        int w = width();
        for (int g = 0; g < p.groupSample.size(); g++) {
            double[] grad = p.groupGrad.get(g);
            boolean[] taken = new boolean[p.groupEnd.get(g)];
            for (int j : p.groupSample.get(g)) {
                taken[j] = true;
            }
            for (int j = 0; j < taken.length; j++) {
                if (!taken[j]) {
                    int vo = (keyBase + j) * w + h * hs;
                    for (int e = 0; e < hs; e++) {
                        dv[vo + e] += grad[e];
                    }
                }
            }
        }
    }

    /** out (whole rows) = the sketched attention of every sequence in cu. */
    void forward(double[] out, double[] q, double[] k, double[] v, int[] cu, long seed) {
        for (int b = 0; b + 1 < cu.length; b++) {
            for (int h = 0; h < heads; h++) {
                Plan p = plan(q, k, v, cu[b], cu[b + 1] - cu[b], 0, cu[b + 1] - cu[b], h, b, seed);
                for (int r = 0; r < p.cols.length; r++) {
                    rowAt(out, null, null, null, null, q, cu[b] + r, k, v, cu[b], h, p, r);
                }
            }
        }
    }

    /** dq, dk, dv += the gradients of {@link #forward} for upstream dout, its draws redrawn from the same inputs. */
    void backward(double[] dq, double[] dk, double[] dv, double[] dout, double[] q, double[] k, double[] v, int[] cu, long seed) {
        for (int b = 0; b + 1 < cu.length; b++) {
            for (int h = 0; h < heads; h++) {
                Plan p = plan(q, k, v, cu[b], cu[b + 1] - cu[b], 0, cu[b + 1] - cu[b], h, b, seed);
                for (int r = 0; r < p.cols.length; r++) {
                    rowAt(null, dq, dk, dv, dout, q, cu[b] + r, k, v, cu[b], h, p, r);
                }
                addUnsampled(dv, cu[b], p, h);
            }
        }
    }

    /**
     * Causal decoding of one sequence: out [n, NH·HS] for queries q [n, NH·HS] at positions
     * start..start+n−1 of keys and values k, v [start + n, NH·HS] (the cache, new rows last).
     */
    void step(double[] out, double[] q, double[] k, double[] v, int start, int n, long seed) {
        if (!causal) {
            throw new IllegalStateException("bidirectional skein attention cannot decode token by token");
        }
        for (int h = 0; h < heads; h++) {
            Plan p = plan(null, k, v, 0, start + n, start, n, h, 0, seed);
            for (int r = 0; r < n; r++) {
                rowAt(out, null, null, null, null, q, r, k, v, 0, h, p, r);
            }
        }
    }

    /**
     * The plan of queries at positions first..first+count−1 of a sequence whose keys are rows
     * base..base+n−1 (the causal plan needs no queries, so q may be null then).
     */
    private Plan plan(double[] q, double[] k, double[] v, int base, int n, int first, int count, int h, int b, long seed) {
        Plan plan = newPlan(count);
        int[][] cols = plan.cols;
        int[] sketched = plan.sketched;
        int[] unsampled = plan.unsampled;
        double[][] rest = plan.rest;
        int hs = headDim;
        if (causal) {
            int tile = samples;
            int cached = -1;
            int[] sample = null;
            double[] sampleRest = null;
            int group = -1;
            int prefixEnd = first + count;
            double[] norm = new double[prefixEnd];
            for (int j = 0; j < prefixEnd; j++) {
                norm[j] = Math.sqrt(sq(k, base + j, width(), h * hs)) * Math.sqrt(sq(v, base + j, width(), h * hs));
            }
            for (int r = 0; r < count; r++) {
                int i = first + r;
                int t0 = i / tile * tile;
                if (t0 != cached) {
                    cached = t0;
                    sample = draw(Arrays.copyOf(norm, t0), samples, Seeds.derive(seed, h, i / tile));
                    sampleRest = restSum(v, base, t0, sample, width(), h * hs);
                    group = plan.add(sample, t0, hs);
                }
                int[] c = Arrays.copyOf(sample, sample.length + i - t0 + 1);
                for (int j = t0; j <= i; j++) {
                    c[sample.length + j - t0] = j;
                }
                cols[r] = c;
                sketched[r] = sample.length;
                unsampled[r] = t0 - sample.length;
                rest[r] = sampleRest;
                plan.group[r] = group;
            }
            return plan;
        }
        int[] all = new int[n];
        Arrays.setAll(all, j -> j);
        Draws d = draws(q, k, v, base, n, width(), h * hs, h, b, seed);
        int[] pilots = d.pilots();
        int[] sample = d.sample();
        double[] sampleRest = d.rest();
        int group = plan.add(sample, n, hs);
        boolean[] isPilot = new boolean[n];
        for (int pr : pilots) {
            isPilot[pr] = true;
        }
        for (int r = 0; r < count; r++) {
            if (isPilot[first + r]) {
                cols[r] = all;
                rest[r] = new double[hs];
                plan.group[r] = -1;
            } else {
                cols[r] = sample;
                sketched[r] = sample.length;
                unsampled[r] = n - sample.length;
                rest[r] = sampleRest;
                plan.group[r] = group;
            }
        }
        return plan;
    }

    /**
     * The draws of one head of one bidirectional sequence of n rows: the pilot rows and the
     * sampled columns (both increasing, relative to the sequence) and the sum of the value rows
     * the sample leaves out [HS].
     */
    public record Draws(int[] pilots, int[] sample, double[] rest) {
    }

    /**
     * The bidirectional draws of head h of sequence b (which seed its streams) from that head's
     * rows alone: q, k, v [n, HS], row j at j·HS. The same draws, bit for bit, as this record's
     * forward and backward make, so a fast kernel can compute around them.
     */
    public Draws draws(double[] q, double[] k, double[] v, int n, int h, int b, long seed) {
        if (causal) {
            throw new IllegalStateException("causal skein attention draws per tile, not per sequence");
        }
        return draws(q, k, v, 0, n, headDim, 0, h, b, seed);
    }

    /** The draws over keys base..base+n−1, row r of the head at r·ld + col. */
    private Draws draws(double[] q, double[] k, double[] v, int base, int n, int ld, int col, int h, int b, long seed) {
        int[] all = new int[n];
        Arrays.setAll(all, j -> j);
        int[] pilots = draw(uniform(n), Math.min(pilot, n), Seeds.derive(seed, h, b, 0));
        double[] colSq = new double[n];
        double[] probs = new double[n];
        for (int pr : pilots) {
            softmaxRow(probs, q, base + pr, k, base, all, ld, col);
            for (int j = 0; j < n; j++) {
                colSq[j] += probs[j] * probs[j];
            }
        }
        double[] w = new double[n];
        for (int j = 0; j < n; j++) {
            // Without pilots every column weighs by its value norm alone.
            w[j] = (pilots.length == 0 ? 1 : Math.sqrt(colSq[j])) * Math.sqrt(sq(v, base + j, ld, col));
        }
        int[] sample = draw(w, samples, Seeds.derive(seed, h, b, 1));
        return new Draws(pilots, sample, restSum(v, base, n, sample, ld, col));
    }

    /**
     * One query row: out = N/D with N = Σ_c e^{l_c} v_c + e^{m} R and D = Σ_c e^{l_c} + u e^{m}, l_c = q·k_c/√HS, m the mean
     * of the sampled logits, u the unsampled columns and R their value sum (the model term is
     * left out without adaptive normalisation). With dout given, accumulates the gradients instead.
     */
    private void rowAt(double[] out, double[] dq, double[] dk, double[] dv, double[] dout, double[] q, int qRow, double[] k,
                       double[] v, int keyBase, int h, Plan p, int r) {
        int hs = headDim;
        int w = width();
        int[] c = p.cols[r];
        int ns = p.sketched[r];
        boolean model = adaptive && p.unsampled[r] > 0 && ns > 0;
        double scale = 1 / Math.sqrt(hs);
        int qo = qRow * w + h * hs;
        double[] l = new double[c.length];
        double max = Double.NEGATIVE_INFINITY;
        double mean = 0;
        for (int x = 0; x < c.length; x++) {
            l[x] = dot(q, qo, k, (keyBase + c[x]) * w + h * hs, hs) * scale;
            max = Math.max(max, l[x]);
            if (x < ns) {
                mean += l[x];
            }
        }
        mean = ns > 0 ? mean / ns : 0;
        // The shift by the row's largest logit cancels in N/D; the mean never exceeds it.
        double em = model ? Math.exp(mean - max) : 0;
        double den = model ? em * p.unsampled[r] : 0;
        double[] num = new double[hs];
        for (int x = 0; x < c.length; x++) {
            l[x] = Math.exp(l[x] - max);
            den += l[x];
            int vo = (keyBase + c[x]) * w + h * hs;
            for (int e = 0; e < hs; e++) {
                num[e] += l[x] * v[vo + e];
            }
        }
        double[] rest = p.rest[r];
        if (model) {
            for (int e = 0; e < hs; e++) {
                num[e] += em * rest[e];
            }
        }
        double[] o = new double[hs];
        for (int e = 0; e < hs; e++) {
            o[e] = num[e] / den;
        }
        if (dout == null) {
            for (int e = 0; e < hs; e++) {
                out[qo + e] = o[e];
            }
            return;
        }
        // dN = g/D, dD = −g·o/D; dl_c = e^{l_c}(dN·v_c + dD), plus dm/ns for sampled columns.
        double[] dn = new double[hs];
        double dd = 0;
        for (int e = 0; e < hs; e++) {
            dn[e] = dout[qo + e] / den;
            dd -= dn[e] * o[e];
        }
        double dm = 0;
        if (model) {
            double s = dd * p.unsampled[r];
            for (int e = 0; e < hs; e++) {
                s += dn[e] * rest[e];
            }
            dm = em * s;
            // R is the sum of the unsampled value rows: each receives e^{m}·dN, summed over the group first.
            double[] gg = p.groupGrad.get(p.group[r]);
            for (int e = 0; e < hs; e++) {
                gg[e] += em * dn[e];
            }
        }
        for (int x = 0; x < c.length; x++) {
            int ko = (keyBase + c[x]) * w + h * hs;
            double dv0 = dot(dn, 0, v, ko, hs);
            for (int e = 0; e < hs; e++) {
                dv[ko + e] += l[x] * dn[e];
            }
            double dl = l[x] * (dv0 + dd) + (x < ns ? dm / ns : 0);
            double g = dl * scale;
            for (int e = 0; e < hs; e++) {
                dq[qo + e] += (g * k[ko + e]);
                dk[ko + e] += (g * q[qo + e]);
            }
        }
    }

    /** The exact softmax row of query row qRow over the columns cols of keys from base. */
    private void softmaxRow(double[] probs, double[] q, int qRow, double[] k, int base, int[] cols, int ld, int col) {
        int hs = headDim;
        double scale = 1 / Math.sqrt(hs);
        double max = Double.NEGATIVE_INFINITY;
        for (int x = 0; x < cols.length; x++) {
            probs[x] = dot(q, qRow * ld + col, k, (base + cols[x]) * ld + col, hs) * scale;
            max = Math.max(max, probs[x]);
        }
        double sum = 0;
        for (int x = 0; x < cols.length; x++) {
            probs[x] = Math.exp(probs[x] - max);
            sum += probs[x];
        }
        for (int x = 0; x < cols.length; x++) {
            probs[x] /= sum;
        }
    }

    /** Σ of the value rows 0..n−1 (from base) that sample does not hold, row r at r·ld + col. */
    private double[] restSum(double[] v, int base, int n, int[] sample, int ld, int col) {
        int hs = headDim;
        double[] s = new double[hs];
        boolean[] taken = new boolean[n];
        for (int j : sample) {
            taken[j] = true;
        }
        for (int j = 0; j < n; j++) {
            if (!taken[j]) {
                int vo = (base + j) * ld + col;
                for (int e = 0; e < hs; e++) {
                    s[e] += v[vo + e];
                }
            }
        }
        return s;
    }

    /**
     * a[ao..ao+n) · b[bo..bo+n) in four partial sums, s_i over the elements e ≡ i (mod 4) and the
     * tail in s_0, added as (s0 + s1) + (s2 + s3). The four sums are the lanes of one 256-bit
     * vector, each multiplied then added exactly as scalar code would, so the result does not
     * depend on the hardware's vector width; the draws' pilot rows spend most of their time here.
     */
    private static double dot(double[] a, int ao, double[] b, int bo, int n) {
        DoubleVector acc = DoubleVector.zero(D4);
        int e = 0;
        for (; e + 3 < n; e += 4) {
            acc = acc.add(DoubleVector.fromArray(D4, a, ao + e).mul(DoubleVector.fromArray(D4, b, bo + e)));
        }
        double s0 = acc.lane(0);
        for (; e < n; e++) {
            s0 += a[ao + e] * b[bo + e];
        }
        return (s0 + acc.lane(1)) + (acc.lane(2) + acc.lane(3));
    }

    private double sq(double[] x, int row, int ld, int col) {
        int o = row * ld + col;
        return dot(x, o, x, o, headDim);
    }

    private static double[] uniform(int n) {
        double[] w = new double[n];
        Arrays.fill(w, 1);
        return w;
    }

    /**
     * min(m, n) distinct indices of w, drawn ∝ w without replacement (Efraimidis–Spirakis: the m
     * largest keys log(u)/w, u from the counter stream {@code seed}), in increasing order; all of
     * them when m ≥ n. Zero weights come last, lower index first.
     */
    static int[] draw(double[] w, int m, long seed) {
        int n = w.length;
        if (m >= n) {
            int[] all = new int[n];
            Arrays.setAll(all, j -> j);
            return all;
        }
        double[] key = new double[n];
        for (int j = 0; j < n; j++) {
            double u = (Seeds.bits24(seed, j) + 0.5) / (1 << 24);
            key[j] = w[j] > 0 ? Math.log(u) / w[j] : Double.NEGATIVE_INFINITY;
        }
        // The m best by (key descending, index ascending), a total order, so the set is the one a
        // full sort would give: kept in a heap whose root is the worst of them, O(n log m).
        int[] s = new int[m];
        for (int j = 0; j < n; j++) {
            if (j < m) {
                s[j] = j;
                for (int c = j; c > 0 && before(key, s[(c - 1) / 2], s[c]); c = (c - 1) / 2) {
                    swap(s, c, (c - 1) / 2);
                }
            } else if (before(key, j, s[0])) {
                s[0] = j;
                for (int c = 0; ; ) {
                    int worst = c;
                    for (int kid = 2 * c + 1; kid <= 2 * c + 2 && kid < m; kid++) {
                        if (before(key, s[worst], s[kid])) {
                            worst = kid;
                        }
                    }
                    if (worst == c) {
                        break;
                    }
                    swap(s, c, worst);
                    c = worst;
                }
            }
        }
        Arrays.sort(s);
        return s;
    }

    /** Whether index a comes before index b in the draw's order: larger key first, then lower index. */
    private static boolean before(double[] key, int a, int b) {
        return key[a] != key[b] ? Double.compare(key[a], key[b]) > 0 : a < b;
    }

    private static void swap(int[] a, int i, int j) {
        int t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}
