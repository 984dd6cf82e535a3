package org.kindling.models.train;

import java.util.LinkedHashMap;
import java.util.Locale;
import java.util.Map;
import org.kindling.models.config.OptimizerConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.nn.Params;
import org.kindling.ops.Backend;
import org.kindling.ops.BinaryOp;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;

/**
 * M-FAC (Frantar et al. 2021) over all trainable parameters as one vector: each step inserts the
 * clipped gradient g into the {@link MfacWindow} (the oldest is dropped once it holds ngrads),
 * takes {@code u = F⁻¹g}, smooths it as {@code v ← μv + (1 − μ)u} when momentum is on, and sets
 * {@code w ← w·(1 − lr·wd) − lr·v} per group (its learning-rate multiplier, decay as AdamW's, only
 * on decay groups). The window's row for step s is {@code s mod ngrads}, so it follows from the step.
 * Checkpoints hold the window ({@code mfac.window}), its Gram matrix ({@code mfac.gram}) and the
 * momentum ({@code mfac.momentum}), so a resume continues bit-identically.
 */
public final class MfacOptimizer implements Optimizer {
    private final TrainConfig cfg;
    private final OptimizerConfig opt;
    private final MfacWindow window;
    private final Tensor direction;
    private final Tensor velocity;

    public MfacOptimizer(Params params, TrainConfig cfg) {
        this.cfg = cfg;
        this.opt = cfg.optimizer();
        Device dev = params.values().device();
        int d = params.count();
        this.window = new MfacWindow(dev, opt.ngrads(), d, opt.damp());
        Tensor dir = null;
        try {
            dir = dev.allocate(DType.F32, d);
            this.direction = dir;
            this.velocity = opt.momentum() > 0 ? dev.allocate(DType.F32, d) : null;
        } catch (RuntimeException | Error e) {
            if (dir != null) {
                dir.close();
            }
            window.close();
            throw e;
        }
        if (velocity != null) {
            dev.backend().fill(velocity, 0f);
        }
    }

    public MfacWindow window() {
        return window;
    }

    @Override
    public void step(Params params, int step, float lr, float gradScale) {
        Backend be = params.values().device().backend();
        window.insertAndMultiply(direction, step % window.size(), params.grads(), gradScale);
        Tensor update = direction;
        if (velocity != null) {
            float mu = (float) opt.momentum();
            be.affine(velocity, velocity, mu, 0f);
            be.affine(direction, direction, 1f - mu, 0f);
            be.binary(BinaryOp.ADD, velocity, velocity, direction);
            update = velocity;
        }
        for (Params.Segment seg : params.segments()) {
            float segLr = (float) (lr * seg.group().lrScale());
            Tensor w = params.values().view(seg.offset(), seg.length());
            if (seg.group().decay() && cfg.weightDecay() > 0) {
                be.affine(w, w, (float) (1 - segLr * cfg.weightDecay()), 0f);
            }
            // direction is free once the velocity holds the update: it takes −lr·update per group.
            Tensor scaled = direction.view(seg.offset(), seg.length());
            be.affine(scaled, update.view(seg.offset(), seg.length()), -segLr, 0f);
            be.binary(BinaryOp.ADD, w, w, scaled);
        }
    }

    @Override
    public Map<String, StateTensor> state() {
        Map<String, StateTensor> out = new LinkedHashMap<>();
        out.put("mfac.window", StateTensor.of(window.window()));
        out.put("mfac.gram", StateTensor.of(window.gramState()));
        if (velocity != null) {
            out.put("mfac.momentum", StateTensor.of(velocity));
        }
        return out;
    }

    @Override
    public void restored() {
        window.restoreGram();
    }

    @Override
    public long memoryBytes() {
        return window.memoryBytes() + (long) Float.BYTES * direction.numel() * (velocity != null ? 2 : 1);
    }

    @Override
    public String describe() {
        return String.format(Locale.ROOT, "optimizer mfac (ngrads %d, damp %s, momentum %s): window %d × %d fp32 = %.1f MB, "
                + "%.1f MB in all", window.size(), opt.damp(), opt.momentum(), window.size(), window.dim(),
                (double) Float.BYTES * window.size() * window.dim() / 1e6, memoryBytes() / 1e6);
    }

    @Override
    public void close() {
        window.close();
        direction.close();
        if (velocity != null) {
            velocity.close();
        }
    }
}
