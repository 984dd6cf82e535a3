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
 *
 * <p>Under {@code zero: 1} it keeps and updates only its worker's shard of the flat buffer
 * ({@link ZeroShards}): the same elementwise update on the same elements, so the same bits, with
 * 1/W of the moments. A checkpoint still holds every parameter's moments: {@link #gather} brings
 * the other shards to rank 0 before it is written, and a restore keeps only the own shard of what
 * it reads, so a checkpoint resumes with any world size and with or without sharding.
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
    /** The shard of the flat buffer this optimizer updates: elements [from, to). */
    private final int from;
    private final int to;
    /** Rank 0 of a sharded run, after {@link #gather} until the next step: every parameter's moments. */
    private float[] gatheredM;
    private float[] gatheredV;

    public AdamWOptimizer(Params params, TrainConfig cfg) {
        this(params, cfg, 0, params.count(), BUCKET);
    }

    /** Keeping and updating only elements [{@code from}, {@code to}) of the flat buffer (ZeRO-1). */
    public AdamWOptimizer(Params params, TrainConfig cfg, int from, int to) {
        this(params, cfg, from, to, BUCKET);
    }

    /** With offload buckets of {@code bucket} floats (tests cross bucket boundaries with small ones). */
    AdamWOptimizer(Params params, TrainConfig cfg, int bucket) {
        this(params, cfg, 0, params.count(), bucket);
    }

    private AdamWOptimizer(Params params, TrainConfig cfg, int from, int to, int bucket) {
        if (bucket < 1) {
            throw new IllegalArgumentException("an offload bucket holds >= 1 float, got " + bucket);
        }
        if (from < 0 || from > to || to > params.count()) {
            throw new IllegalArgumentException("shard [" + from + ", " + to + ") is not within the " + params.count()
                    + " parameters");
        }
        this.params = params;
        this.cfg = cfg;
        this.from = from;
        this.to = to;
        int n = to - from;
        boolean offload = cfg.offloadOptimizerState();
        // An empty shard (more workers than parameters) still gets a one-float tensor: some devices allocate no zero-size ones.
        int onDevice = Math.max(1, offload ? Math.min(bucket, n) : n);
        Device dev = params.values().device();
        Tensor first = null;
        Tensor second = null;
        HostStore firstHost = null;
        HostStore secondHost = null;
        try {
            first = dev.allocate(DType.F32, onDevice);
            second = dev.allocate(DType.F32, onDevice);
            if (offload) {
                // Pinned on a GPU, so the moments stream in and out as direct transfers.
                firstHost = dev.backend().allocateStore(n);
                secondHost = dev.backend().allocateStore(n);
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
        gatheredM = null;
        gatheredV = null;
        Backend be = params.values().device().backend();
        int bucket = m.numel();
        // One AdamW call per parameter group (its learning-rate multiplier, and decay only where it applies) within the
        // shard, per bucket; the moments' element i is the flat buffer's from + i.
        for (Params.Segment seg : params.segments()) {
            AdamW update = new AdamW((float) (lr * seg.group().lrScale()), (float) cfg.beta1(), (float) cfg.beta2(), (float) cfg.eps(),
                    seg.group().decay() ? (float) cfg.weightDecay() : 0f, step + 1, gradScale);
            int end = Math.min(to, seg.offset() + seg.length());
            for (int o = Math.max(from, seg.offset()); o < end; o += bucket) {
                int n = Math.min(bucket, end - o);
                Tensor mb = hostM == null ? m.view(o - from, n) : m.view(0, n);
                Tensor vb = hostV == null ? v.view(o - from, n) : v.view(0, n);
                if (hostM != null) {
                    be.copyFromStore(mb, hostM, o - from);
                    be.copyFromStore(vb, hostV, o - from);
                }
                be.adamW(params.values().view(o, n), params.grads().view(o, n), mb, vb, update);
                if (hostM != null) {
                    be.copyToStore(hostM, o - from, mb);
                    be.copyToStore(hostV, o - from, vb);
                }
            }
        }
    }

    /**
     * Collective (every worker calls it with the same {@code bounds}, its shard being
     * [bounds[rank], bounds[rank+1])): brings every worker's moments to rank 0, whose {@link #state}
     * then holds all of them until the next step. The other workers keep only their shard.
     */
    public void gather(GradientSync sync, int[] bounds) {
        if (bounds[sync.rank()] != from || bounds[sync.rank() + 1] != to) {
            throw new IllegalArgumentException("rank " + sync.rank() + " holds the moments of [" + from + ", " + to
                    + "), not of shard " + java.util.Arrays.toString(bounds));
        }
        float[] allM = own(m, hostM);
        float[] allV = own(v, hostV);
        sync.allGather(allM, bounds);
        sync.allGather(allV, bounds);
        if (sync.rank() == 0) {
            gatheredM = allM;
            gatheredV = allV;
        }
    }

    /** A flat array of every parameter's moment, holding this shard's values (the rest zero). */
    private float[] own(Tensor onDevice, HostStore host) {
        float[] out = new float[params.count()];
        if (to > from) {
            if (host == null) {
                System.arraycopy(onDevice.view(0, to - from).toFloatArray(), 0, out, from, to - from);
            } else {
                host.get(0, out, from, to - from);
            }
        }
        return out;
    }

    @Override
    public Map<String, StateTensor> state() {
        Map<String, StateTensor> out = new LinkedHashMap<>();
        for (Param p : params.list()) {
            int o = p.value().offset() - params.values().offset();
            out.put("m." + p.name(), part(p, o, m, hostM, gatheredM));
            out.put("v." + p.name(), part(p, o, v, hostV, gatheredV));
        }
        return out;
    }

    /** A moment of parameter {@code p} (at {@code o} in the flat buffer): this shard's, gathered, or held by another worker. */
    private StateTensor part(Param p, int o, Tensor onDevice, HostStore host, float[] gathered) {
        if (!ZeroShards.owns(params, p, from, to)) {
            return gathered != null ? StateTensor.of(gathered, o, p.shape()) : StateTensor.elsewhere(p.shape());
        }
        return host == null ? StateTensor.of(onDevice.view(o - from, p.shape())) : StateTensor.of(host, o - from, p.shape());
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
        if (to - from < params.count()) {
            where += String.format(Locale.ROOT, ", sharded (zero 1): %d of %d parameters", to - from, params.count());
        }
        return String.format(Locale.ROOT, "optimizer adamw (beta1 %s, beta2 %s, eps %s): %s", cfg.beta1(), cfg.beta2(), cfg.eps(),
                where);
    }

    @Override
    public void close() {
        m.close();
        v.close();
        if (hostM != null) {
            try {
                hostM.close();
            } finally {
                hostV.close();
            }
        }
    }
}
