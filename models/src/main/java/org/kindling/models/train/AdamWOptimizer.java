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
import org.kindling.ops.Device;
import org.kindling.ops.HostStore;
import org.kindling.ops.Tensor;

/**
 * AdamW with decoupled weight decay on fp32 master weights, one {@link Backend#adamW} call per
 * parameter group (its decay and learning-rate multiplier). Checkpoints hold its moments as
 * {@code m.NAME} and {@code v.NAME} per parameter.
 *
 * <p>Under {@code offload.optimizer_state: host} the moments live in a {@link HostStore} (off the
 * device, and off the Java heap) and stream through two device buckets of {@link #BUCKET} floats:
 * each group's range, a bucket at a time, is copied in, updated by the same kernel and copied back.
 * AdamW is elementwise, so the result is bit-identical to keeping the moments on the device; the
 * device holds 2 buckets instead of 2 × the parameter count.
 */
public final class AdamWOptimizer implements Optimizer {
    /** Floats per offload bucket: 4 MB a moment, large enough that a copy costs more than its call. */
    static final int BUCKET = 1 << 20;

    private final Params params;
    private final TrainConfig cfg;
    /** On the device: the moments, flat like the parameters; offloaded: the two buckets. */
    private final Tensor m;
    private final Tensor v;
    /** Offloaded: the moments, flat like the parameters; null on the device. */
    private final HostStore hostM;
    private final HostStore hostV;

    public AdamWOptimizer(Params params, TrainConfig cfg) {
        this(params, cfg, BUCKET);
    }

    /** With offload buckets of {@code bucket} floats (tests cross bucket boundaries with small ones). */
    AdamWOptimizer(Params params, TrainConfig cfg, int bucket) {
        if (bucket < 1) {
            throw new IllegalArgumentException("an offload bucket holds >= 1 float, got " + bucket);
        }
        this.params = params;
        this.cfg = cfg;
        int n = params.count();
        boolean offload = cfg.offloadOptimizerState();
        int onDevice = offload ? Math.min(bucket, n) : n;
        Device dev = params.values().device();
        Tensor first = null;
        Tensor second = null;
        HostStore firstHost = null;
        HostStore secondHost = null;
        try {
            first = dev.allocate(DType.F32, onDevice);
            second = dev.allocate(DType.F32, onDevice);
            if (offload) {
                firstHost = HostStore.allocate(n);
                secondHost = HostStore.allocate(n);
            }
        } catch (RuntimeException | Error e) {
            for (Tensor t : new Tensor[] {first, second}) {
                if (t != null) {
                    t.close();
                }
            }
            for (HostStore h : new HostStore[] {firstHost, secondHost}) {
                if (h != null) {
                    h.close();
                }
            }
            throw e;
        }
        this.m = first;
        this.v = second;
        this.hostM = firstHost;
        this.hostV = secondHost;
    }

    @Override
    public void step(Params params, int step, float lr, float gradScale) {
        Backend be = params.values().device().backend();
        int bucket = m.numel();
        // One AdamW call per parameter group (its learning-rate multiplier, and decay only where it applies), per bucket.
        for (Params.Segment seg : params.segments()) {
            AdamW update = new AdamW((float) (lr * seg.group().lrScale()), (float) cfg.beta1(), (float) cfg.beta2(), (float) cfg.eps(),
                    seg.group().decay() ? (float) cfg.weightDecay() : 0f, step + 1, gradScale);
            int end = seg.offset() + seg.length();
            for (int o = seg.offset(); o < end; o += bucket) {
                int n = Math.min(bucket, end - o);
                Tensor mb = hostM == null ? m.view(o, n) : m.view(0, n);
                Tensor vb = hostV == null ? v.view(o, n) : v.view(0, n);
                if (hostM != null) {
                    be.copyFromStore(mb, hostM, o);
                    be.copyFromStore(vb, hostV, o);
                }
                be.adamW(params.values().view(o, n), params.grads().view(o, n), mb, vb, update);
                if (hostM != null) {
                    be.copyToStore(hostM, o, mb);
                    be.copyToStore(hostV, o, vb);
                }
            }
        }
    }

    @Override
    public Map<String, StateTensor> state() {
        Map<String, StateTensor> out = new LinkedHashMap<>();
        for (Param p : params.list()) {
            int o = p.value().offset() - params.values().offset();
            out.put("m." + p.name(), hostM == null ? StateTensor.of(m.view(o, p.shape())) : StateTensor.of(hostM, o, p.shape()));
            out.put("v." + p.name(), hostV == null ? StateTensor.of(v.view(o, p.shape())) : StateTensor.of(hostV, o, p.shape()));
        }
        return out;
    }

    @Override
    public void restored() {
        // Everything AdamW keeps is in its moments.
    }

    @Override
    public long memoryBytes() {
        return 2L * Float.BYTES * m.numel();
    }

    /** Bytes of host memory the offloaded moments hold (0 on the device). */
    public long hostBytes() {
        return hostM == null ? 0 : hostM.bytes() + hostV.bytes();
    }

    @Override
    public String describe() {
        String where = hostM == null ? String.format(Locale.ROOT, "moments %.1f MB", memoryBytes() / 1e6)
                : String.format(Locale.ROOT, "moments %.1f MB in host memory, streamed through %.1f MB of device buckets",
                        hostBytes() / 1e6, memoryBytes() / 1e6);
        return String.format(Locale.ROOT, "optimizer adamw (beta1 %s, beta2 %s, eps %s): %s", cfg.beta1(), cfg.beta2(), cfg.eps(),
                where);
    }

    @Override
    public void close() {
        m.close();
        v.close();
        if (hostM != null) {
            hostM.close();
            hostV.close();
        }
    }
}
