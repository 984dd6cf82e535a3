package org.kindling.models.train;

import java.util.LinkedHashMap;
import java.util.Locale;
import java.util.Map;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.nn.Param;
import org.kindling.models.nn.Params;
import org.kindling.ops.AdamW;
import org.kindling.ops.Backend;
import org.kindling.ops.DType;
import org.kindling.ops.Tensor;

/**
 * AdamW with decoupled weight decay on fp32 master weights, one {@link Backend#adamW} call per
 * parameter group (its decay and learning-rate multiplier). Checkpoints hold its moments as
 * {@code m.NAME} and {@code v.NAME} per parameter.
 */
public final class AdamWOptimizer implements Optimizer {
    private final Params params;
    private final TrainConfig cfg;
    private final Tensor m;
    private final Tensor v;

    public AdamWOptimizer(Params params, TrainConfig cfg) {
        this.params = params;
        this.cfg = cfg;
        int n = params.count();
        this.m = params.values().device().allocate(DType.F32, n);
        try {
            this.v = params.values().device().allocate(DType.F32, n);
        } catch (RuntimeException | Error e) {
            m.close();
            throw e;
        }
    }

    /** First moments, flat like the parameters. */
    public Tensor firstMoments() {
        return m;
    }

    /** Second moments, flat like the parameters. */
    public Tensor secondMoments() {
        return v;
    }

    @Override
    public void step(Params params, int step, float lr, float gradScale) {
        Backend be = params.values().device().backend();
        // One AdamW call per parameter group: its learning-rate multiplier, and decay only where it applies.
        for (Params.Segment seg : params.segments()) {
            AdamW update = new AdamW((float) (lr * seg.group().lrScale()), (float) cfg.beta1(), (float) cfg.beta2(), (float) cfg.eps(),
                    seg.group().decay() ? (float) cfg.weightDecay() : 0f, step + 1, gradScale);
            int o = seg.offset();
            int n = seg.length();
            be.adamW(params.values().view(o, n), params.grads().view(o, n), m.view(o, n), v.view(o, n), update);
        }
    }

    @Override
    public Map<String, Tensor> state() {
        Map<String, Tensor> out = new LinkedHashMap<>();
        for (Param p : params.list()) {
            out.put("m." + p.name(), perParam(m, p));
            out.put("v." + p.name(), perParam(v, p));
        }
        return out;
    }

    private Tensor perParam(Tensor flat, Param p) {
        return flat.view(p.value().offset() - params.values().offset(), p.shape());
    }

    @Override
    public void restored() {
        // Everything AdamW keeps is in its moments.
    }

    @Override
    public long memoryBytes() {
        return 2L * Float.BYTES * params.count();
    }

    @Override
    public String describe() {
        return String.format(Locale.ROOT, "optimizer adamw (beta1 %s, beta2 %s, eps %s): moments %.1f MB", cfg.beta1(), cfg.beta2(),
                cfg.eps(), memoryBytes() / 1e6);
    }

    @Override
    public void close() {
        m.close();
        v.close();
    }
}
