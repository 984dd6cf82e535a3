package org.kindling.models.nn;

import org.kindling.ops.Backend;
import org.kindling.ops.BinaryOp;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Gemm;
import org.kindling.ops.Tensor;

/**
 * Scaling Transformers' local convolution over modules (trax {@code LocallyConvDense}): each row
 * x[t, C] is split into S modules of M = C / S units, and
 * y[t, s, o] = b[o] + Σ_{l &lt; L} Σ_{j &lt; K} Σ_i x[t − (L−1) + l, s + j − (K−1)/2, i]·W[l, j, i, o],
 * a 2-D convolution over (tokens, modules) with W [L, K, M, M] and b [M] shared by every module:
 * causal over the L tokens up to t within each packed sequence (earlier positions, and those of
 * other sequences, are zero), centred and zero padded over the K modules around s. Built as
 * im2col: one {@code gatherRows} lays the L·K taps of every (t, s) side by side, U [T·S, L·K·M],
 * then y = U·W is one GEMM; backward is two GEMMs and a {@code scatterAddRows}. Decoding keeps
 * each sequence's last L − 1 inputs ({@link State}), which start as zeros, as the padding does.
 * ({@code Backend.causalConvForward} does not fit: it is depthwise, one kernel per channel, while
 * every tap here mixes a module's M units.)
 */
public final class ModuleConv implements AutoCloseable {
    private final String name;
    /** S */
    public final int modules;
    /** M */
    public final int unit;
    /** K, odd */
    public final int kernel;
    /** L */
    public final int lengthKernel;
    /** C = S·M */
    public final int width;
    /** W [L, K, M, M], as one [L·K·M, M] matrix */
    public final Params.Handle weight;
    /** b [M] */
    public final Params.Handle bias;
    private final Device dev;
    private final Activations acts;
    /** U [T·S, L·K·M]: the gathered taps (forward, backward and decoding, one at a time). */
    private final Activation unfold;
    /** dU [T·S, L·K·M] in backward. */
    private final Activation dunfold;
    /** Decoding: each sequence's remembered rows followed by its new ones [Σ (L − 1 + n_b), C]. */
    private final Activation stepSource;
    /** The gather's source row per tap, −1 for padding: training (kept for backward) and decoding. */
    private final Rows trainRows = new Rows();
    private final Rows stepRows = new Rows();
    private Tensor x;

    /** W ~ N(0, std²) (decayed), b zero (not decayed). */
    public ModuleConv(Params.Builder pb, Device dev, Workspace workspace, String name, int width, int modules, int kernel,
                      int lengthKernel, double std) {
        if (modules < 1 || width % modules != 0) {
            throw new IllegalArgumentException(name + ": " + modules + " modules do not divide the width " + width);
        }
        if (kernel < 1 || kernel % 2 == 0) {
            throw new IllegalArgumentException(name + ": the kernel over modules must be odd and positive, got " + kernel);
        }
        if (lengthKernel < 1) {
            throw new IllegalArgumentException(name + ": the kernel over tokens must be positive, got " + lengthKernel);
        }
        this.name = name;
        this.modules = modules;
        this.unit = width / modules;
        this.kernel = kernel;
        this.lengthKernel = lengthKernel;
        this.width = width;
        this.dev = dev;
        this.weight = pb.add(name + ".weight", Init.normal(std), ParamGroup.DECAY, lengthKernel, kernel, unit, unit);
        this.bias = pb.add(name + ".bias", Init.zeros(), ParamGroup.NO_DECAY, unit);
        this.acts = new Activations(dev, name, workspace);
        this.unfold = acts.scratch("modconv.unfold");
        this.dunfold = acts.scratch("modconv.dunfold");
        this.stepSource = acts.scratch("modconv.step_source");
    }

    /** Trainable elements: L·K·M² + M. */
    public long parameters() {
        return (long) lengthKernel * kernel * unit * unit + unit;
    }

    private int taps() {
        return lengthKernel * kernel;
    }

    /** y[T, C] = conv(x[T, C]) over the packed sequences at host offsets {@code cu}; x must stay unchanged until backward. */
    public void forward(Tensor y, Tensor x, int[] cu) {
        int t = x.rows();
        if (cu.length < 2 || cu[0] != 0 || cu[cu.length - 1] != t) {
            throw new IllegalArgumentException(name + ": sequence offsets " + java.util.Arrays.toString(cu) + " must run from 0 to the "
                    + t + " rows of x");
        }
        int[] host = trainRows.host(t * modules * taps());
        for (int b = 0; b + 1 < cu.length; b++) {
            for (int r = cu[b]; r < cu[b + 1]; r++) {
                // Taps reach back L − 1 tokens from r; before the sequence's start they are padding.
                fillTaps(host, r, r - (lengthKernel - 1), cu[b]);
            }
        }
        Tensor rows = trainRows.upload(dev, host);
        product(y, x, rows, t);
        this.x = x;
    }

    /**
     * Writes the source rows of token {@code r}'s taps: tap l reads token {@code first + l} of the
     * source, a zero row below {@code start}.
     */
    private void fillTaps(int[] host, int r, int first, int start) {
        int half = (kernel - 1) / 2;
        int i = r * modules * taps();
        for (int s = 0; s < modules; s++) {
            for (int l = 0; l < lengthKernel; l++) {
                int tok = first + l;
                for (int j = 0; j < kernel; j++) {
                    int m = s + j - half;
                    host[i++] = tok < start || m < 0 || m >= modules ? -1 : tok * modules + m;
                }
            }
        }
    }

    /** y = gather(source by rows)·W + b for t output rows. */
    private void product(Tensor y, Tensor source, Tensor rows, int t) {
        Backend be = y.device().backend();
        int n = t * modules;
        int k = taps() * unit;
        Tensor u = unfold.write(n * taps(), unit);
        be.gatherRows(u, source.view(0, source.numel() / unit, unit), rows);
        Tensor yy = y.view(0, n, unit);
        be.gemm(Gemm.of(false, false, n, unit, k), yy, u.view(0, n, k), weight.value().view(0, k, unit));
        be.binary(BinaryOp.ADD, yy, yy, bias.value());
    }

    /** dx += ∂L/∂x; dW, db += for upstream dy[T, C]. */
    public void backward(Tensor dx, Tensor dy) {
        int t = dy.rows();
        if (x == null || x.rows() != t) {
            throw new IllegalStateException(name + ": backward for " + t + " rows without a forward over them");
        }
        Backend be = dy.device().backend();
        int n = t * modules;
        int k = taps() * unit;
        Tensor rows = trainRows.device;
        Tensor u = unfold.write(n * taps(), unit);
        Tensor xs = x.view(0, n, unit);
        be.gatherRows(u, xs, rows);
        Tensor dyy = dy.view(0, n, unit);
        be.gemm(Gemm.of(true, false, k, unit, n).scaled(1f, 1f), weight.grad().view(0, k, unit), u.view(0, n, k), dyy);
        be.addColumnSums(bias.grad(), dyy);
        Tensor du = dunfold.write(n, k);
        be.gemm(Gemm.of(false, true, n, k, unit), du, dyy, weight.value().view(0, k, unit));
        be.scatterAddRows(dx.view(0, n, unit), du.view(0, n * taps(), unit), rows, null);
    }

    /** The last L − 1 inputs of each of a batch's sequences [B·(L − 1), C], zero before its first token. */
    public final class State implements AutoCloseable {
        private final Tensor history;
        private final int sequences;

        private State(int sequences) {
            this.sequences = sequences;
            this.history = lengthKernel > 1 ? dev.allocate(DType.F32, sequences * (lengthKernel - 1), width) : null;
            if (history != null) {
                dev.backend().fill(history, 0f);
            }
        }

        public long bytes() {
            return history == null ? 0 : (long) history.numel() * Float.BYTES;
        }

        @Override
        public void close() {
            if (history != null) {
                history.close();
            }
        }
    }

    /** A fresh decoding state for {@code sequences} sequences, each at position 0. */
    public State newState(int sequences) {
        return new State(sequences);
    }

    /**
     * Decoding: y[R, C] for new rows x[R, C], sequence b's at host offsets cu[b] ≤ row &lt; cu[b+1],
     * each following what {@code state} remembers of it; the state advances. Keeps nothing for backward.
     */
    public void step(Tensor y, Tensor x, int[] cu, State state) {
        int seqs = cu.length - 1;
        if (seqs != state.sequences) {
            throw new IllegalArgumentException(name + ": " + seqs + " sequences for a state of " + state.sequences);
        }
        int rows = x.rows();
        int hist = lengthKernel - 1;
        int[] host = stepRows.host(rows * modules * taps());
        if (hist == 0) {
            for (int r = 0; r < rows; r++) {
                fillTaps(host, r, r, 0);
            }
            product(y, x, stepRows.upload(dev, host), rows);
            return;
        }
        Backend be = y.device().backend();
        int active = 0;
        for (int b = 0; b < seqs; b++) {
            active += cu[b + 1] > cu[b] ? 1 : 0;
        }
        Tensor src = stepSource.write(rows + active * hist, width);
        int o = 0;
        for (int b = 0; b < seqs; b++) {
            int n = cu[b + 1] - cu[b];
            if (n == 0) {
                continue;
            }
            Tensor h = state.history.view(b * hist * width, hist, width);
            be.copy(src.view(o * width, hist, width), h);
            be.copy(src.view((o + hist) * width, n, width), x.view(cu[b] * width, n, width));
            for (int i = 0; i < n; i++) {
                // Row i of the chunk sits at source row o + hist + i; its first tap reaches back hist rows.
                fillTaps(host, cu[b] + i, o + i, o);
            }
            o += hist + n;
        }
        product(y, src, stepRows.upload(dev, host), rows);
        o = 0;
        for (int b = 0; b < seqs; b++) {
            int n = cu[b + 1] - cu[b];
            if (n == 0) {
                continue;
            }
            be.copy(state.history.view(b * hist * width, hist, width), src.view((o + n) * width, hist, width));
            o += hist + n;
        }
    }

    @Override
    public void close() {
        trainRows.close();
        stepRows.close();
        acts.close();
    }

    /** A gather's row ids: a host array of the exact length and a device buffer that only grows. */
    private static final class Rows implements AutoCloseable {
        private int[] host = new int[0];
        private Tensor buffer;
        Tensor device;

        int[] host(int n) {
            if (host.length != n) {
                host = new int[n];
            }
            return host;
        }

        Tensor upload(Device dev, int[] ids) {
            if (buffer == null || buffer.numel() < ids.length) {
                if (buffer != null) {
                    buffer.close();
                }
                buffer = dev.allocate(DType.I32, Math.max(1, ids.length));
            }
            device = buffer.view(0, ids.length);
            device.copyFrom(ids);
            return device;
        }

        @Override
        public void close() {
            if (buffer != null) {
                buffer.close();
            }
        }
    }
}
