package org.kindling.ops;

import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Proxy;
import java.time.Duration;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * A device that runs another device's kernels and reports each call to a {@link Profiler}: its
 * {@link KernelClass}, FLOPs, bytes and wall time. Tensors allocated here live in the wrapped
 * device's storage, so its kernels run on them unchanged and results are bit-identical to the
 * unwrapped device's.
 *
 * <p>Time is wall time from the call to its end. A synchronous device (the CPU) has finished when
 * the call returns; on an asynchronous one (CUDA) the profiler waits on the device's
 * {@link Device#fence} after every call, so each kernel's time is its own rather than its launch's
 * — which serialises host and device, so a profiled run is slower than an unprofiled one.
 *
 * <p>Counts, per call (the reference every other number is judged by):
 * <ul>
 * <li>GEMM: FLOPs 2·M·N·K per product ({@link Gemm#flops}; grouped: over all rows); bytes
 * M·K + K·N + M·N elements of A, B and C at their dtypes, C twice when beta ≠ 0 (read and written);
 * batch-reduce: every pair's A and B, C once or twice. Block-sparse linear: 2·T·bs² FLOPs per
 * non-zero block, bytes as the rest below.</li>
 * <li>Attention: FLOPs 4·heads·headDim per attended (query, key) pair forward (QKᵀ and PV), 10 backward
 * (QKᵀ recomputed, dV, dP, dQ, dK); pairs counted per sequence, causal ones only where causal (a
 * block mask is not subtracted). Linear attention 4·T·heads·F·D forward, 8 backward; causal long
 * convolution 2·C per (t, tap ≤ t) forward, twice that backward; FAVOR+ features 2·T·heads·M·D
 * forward, twice that backward.</li>
 * <li>Everything else: FLOPs = a per-kernel constant × the elements of its largest operand
 * (layer norm 8 forward / 12 backward, RMS norm 5 / 9, softmax 5 / 4, cross-entropy 4 forward and
 * 6 with its gradient, GELU 8 / 16, the fused bias + GELU 9 / 17 and residual add + layer norm
 * 9 / 13, dropout 2, bias + dropout + residual add 4, AdamW 12 per parameter, scatter-add 2, embedding
 * gather 0 and its backward 1, copies, fills, transfers and routing 0, the rest 1).</li>
 * <li>Bytes, except GEMM: every distinct operand (aliases counted once) read or written once at its
 * dtype — the compulsory traffic, a lower bound for kernels that accumulate; AdamW counts
 * parameters and both moments twice (read and written) and gradients once; the embedding counts
 * the ids, the rows it reads and writes, not the whole table.</li>
 * </ul>
 */
public final class ProfilingDevice extends Device {
    /** The longest a profiled kernel may take to finish on an asynchronous device before it counts as hung. */
    private static final Duration KERNEL_DEADLINE = Duration.ofMinutes(10);

    private static final Map<String, Integer> FLOPS_PER_ELEMENT = Map.ofEntries(
            Map.entry("layerNormForward", 8), Map.entry("layerNormBackward", 12),
            Map.entry("addLayerNormForward", 9), Map.entry("layerNormBackwardAdd", 13),
            Map.entry("rmsNormForward", 5), Map.entry("rmsNormBackward", 9),
            Map.entry("softmaxForward", 5), Map.entry("softmaxBackward", 4),
            Map.entry("crossEntropyForward", 4), Map.entry("crossEntropyForwardBackward", 6),
            Map.entry("geluForward", 8), Map.entry("geluBackward", 16),
            Map.entry("biasGeluForward", 9), Map.entry("geluBackwardBias", 17),
            Map.entry("dropoutForward", 2), Map.entry("dropoutBackward", 2), Map.entry("biasDropoutAddForward", 4),
            Map.entry("adamW", 12), Map.entry("scatterAddRows", 2),
            Map.entry("embeddingForward", 0), Map.entry("embeddingBackward", 1),
            Map.entry("copyFromHost", 0), Map.entry("copyToHost", 0), Map.entry("copyToStore", 0), Map.entry("copyFromStore", 0),
            Map.entry("fill", 0), Map.entry("copy", 0), Map.entry("transpose", 0),
            Map.entry("topK", 0), Map.entry("expertOffsets", 0), Map.entry("permutation", 0), Map.entry("gatherRows", 0),
            Map.entry("entryTokens", 0), Map.entry("capacitySlots", 0), Map.entry("uniformNoise", 0));

    private final Device inner;
    private final Profiler profiler;
    private final Backend backend;

    ProfilingDevice(Device inner, Profiler profiler) {
        this.inner = inner;
        this.profiler = profiler;
        Map<Method, KernelClass> classes = new HashMap<>();
        for (Method m : Backend.class.getMethods()) {
            KernelClass k = KernelClass.of(m); // fails now, not mid-run, for a kernel without a class
            if (k != null) {
                classes.put(m, k);
            }
        }
        Backend wrapped = inner.backend();
        backend = (Backend) Proxy.newProxyInstance(Backend.class.getClassLoader(), new Class<?>[] {Backend.class},
                (proxy, m, args) -> {
                    if (m.getDeclaringClass() == Object.class) {
                        return switch (m.getName()) {
                            case "toString" -> "Profiling[" + wrapped + "]";
                            case "hashCode" -> System.identityHashCode(proxy);
                            case "equals" -> proxy == args[0];
                            default -> throw new UnsupportedOperationException(m.getName());
                        };
                    }
                    KernelClass k = classes.get(m);
                    boolean outer = k != null && profiler.enter();
                    long t0 = System.nanoTime();
                    try {
                        // A default method runs the wrapped backend's own, so its inner calls are not counted twice.
                        Object result = m.invoke(wrapped, args);
                        if (outer) {
                            inner.fence().awaitOrFail(KERNEL_DEADLINE, "outputs of profiled " + m.getName());
                        }
                        return result;
                    } catch (InvocationTargetException e) {
                        throw e.getCause();
                    } finally {
                        if (k != null) {
                            profiler.exit();
                        }
                        if (outer) {
                            long nanos = System.nanoTime() - t0;
                            profiler.add(k, m.getName(), flops(m.getName(), args), bytes(m.getName(), args), nanos);
                        }
                    }
                });
    }

    /** FLOPs of one call of Backend method {@code name} with {@code args} (see the class comment). */
    static double flops(String name, Object[] args) {
        switch (name) {
            case "gemm", "groupedGemm":
                return ((Gemm) args[0]).flops();
            case "gemmBatched":
                return ((Gemm) args[0]).flops() * ((List<?>) args[1]).size();
            case "brgemm":
                return ((Gemm) args[0]).flops() * ((List<?>) args[2]).size();
            case "blockSparseLinear":
                return blockSparseFlops((BlockLayout) args[3], (Tensor) args[0]);
            case "blockSparseLinearBackwardInput", "blockSparseLinearBackwardWeight":
                return blockSparseFlops((BlockLayout) args[3], (Tensor) args[1]);
            case "attentionForward":
                return 4.0 * attentionWork((Varlen) args[5], (Varlen) args[6], (Attention) args[7]);
            case "attentionBackward":
                return 10.0 * attentionWork((Varlen) args[9], (Varlen) args[10], (Attention) args[11]);
            case "linearAttentionForward":
                return 4.0 * linearWork((Tensor) args[1], (Tensor) args[3], (Integer) args[5]);
            case "linearAttentionBackward":
                return 8.0 * linearWork((Tensor) args[4], (Tensor) args[6], (Integer) args[8]);
            case "causalConvForward":
                return 2.0 * convTaps((Tensor) args[1], (Tensor) args[2], (Varlen) args[3]);
            case "causalConvBackward":
                return 4.0 * convTaps((Tensor) args[3], (Tensor) args[4], (Varlen) args[5]);
            case "favorFeatures":
                return 2.0 * favorWork((Tensor) args[1], (Tensor) args[2], (Integer) args[3]);
            case "favorFeaturesBackward":
                return 4.0 * favorWork((Tensor) args[3], (Tensor) args[4], (Integer) args[5]);
            default:
                return FLOPS_PER_ELEMENT.getOrDefault(name, 1) * (double) largest(args);
        }
    }

    /** Bytes one call of Backend method {@code name} reads and writes (see the class comment). */
    static double bytes(String name, Object[] args) {
        switch (name) {
            case "gemm":
                return gemmBytes((Gemm) args[0], (Tensor) args[1], (Tensor) args[2], (Tensor) args[3]);
            case "gemmBatched": {
                List<?> c = (List<?>) args[1];
                return c.isEmpty() ? 0 : c.size() * gemmBytes((Gemm) args[0], (Tensor) c.get(0),
                        (Tensor) ((List<?>) args[2]).get(0), (Tensor) ((List<?>) args[3]).get(0));
            }
            case "brgemm": {
                Gemm g = (Gemm) args[0];
                Tensor c = (Tensor) args[1];
                List<?> a = (List<?>) args[2];
                Tensor a0 = (Tensor) a.get(0);
                Tensor b0 = (Tensor) ((List<?>) args[3]).get(0);
                return a.size() * ((double) g.m() * g.k() * a0.dtype().bytes() + (double) g.k() * g.n() * b0.dtype().bytes())
                        + (double) g.m() * g.n() * c.dtype().bytes() * (g.beta() == 0f ? 1 : 2);
            }
            case "adamW": {
                Tensor params = (Tensor) args[0];
                return 2.0 * (bytesOf(params) + bytesOf((Tensor) args[2]) + bytesOf((Tensor) args[3])) + bytesOf((Tensor) args[1]);
            }
            case "embeddingForward":
                return bytesOf((Tensor) args[1]) + 2.0 * bytesOf((Tensor) args[0]);
            case "embeddingBackward": {
                Tensor dout = (Tensor) args[1];
                double rows = (double) dout.numel() * ((Tensor) args[0]).dtype().bytes();
                return bytesOf((Tensor) args[2]) + bytesOf(dout) + 2.0 * rows;
            }
            default: {
                double sum = 0;
                for (Tensor t : operands(args)) {
                    sum += bytesOf(t);
                }
                return sum;
            }
        }
    }

    private static double gemmBytes(Gemm g, Tensor c, Tensor a, Tensor b) {
        double perProduct = (double) g.m() * g.k() * a.dtype().bytes() + (double) g.k() * g.n() * b.dtype().bytes()
                + (double) g.m() * g.n() * c.dtype().bytes() * (g.beta() == 0f ? 1 : 2);
        return perProduct * g.batch();
    }

    /** 2·T·bs² per non-zero block, T the rows of {@code tokens} (an operand with layout.rows() columns). */
    private static double blockSparseFlops(BlockLayout layout, Tensor tokens) {
        double t = tokens.numel() / (double) layout.rows();
        return 2.0 * t * layout.blockSize() * layout.blockSize() * layout.nnz();
    }

    /** heads·headDim·(attended query-key pairs per head), over every sequence. */
    private static double attentionWork(Varlen cuQ, Varlen cuK, Attention attn) {
        int[] q = cuQ.host();
        int[] k = cuK.host();
        double pairs = 0;
        for (int b = 0; b + 1 < q.length; b++) {
            long lq = q[b + 1] - q[b];
            long lk = k[b + 1] - k[b];
            if (!attn.causal()) {
                pairs += lq * lk;
                continue;
            }
            // Query i sees keys j ≤ i + (lk − lq): the last lq rows of a causal lk × lk square.
            for (long i = 0; i < lq; i++) {
                pairs += Math.max(0, Math.min(lk, i + lk - lq + 1));
            }
        }
        return pairs * attn.heads() * attn.headDim();
    }

    /** T·heads·F·D for feature-mapped q [T, heads·F] and v [T, heads·D]. */
    private static double linearWork(Tensor q, Tensor v, int heads) {
        return (double) q.rows() * heads * (q.cols() / heads) * (v.cols() / heads);
    }

    /** C·(number of (t, tap) pairs with tap ≤ t and tap &lt; L) for u [T, C], k [L, C]. */
    private static double convTaps(Tensor u, Tensor k, Varlen cu) {
        int[] off = cu.host();
        long taps = k.rows();
        double pairs = 0;
        for (int b = 0; b + 1 < off.length; b++) {
            long len = off[b + 1] - off[b];
            long full = Math.min(len, taps);
            // t < L: t + 1 taps each; t ≥ L: L taps each.
            pairs += full * (full + 1) / 2 + (len - full) * taps;
        }
        return pairs * u.cols();
    }

    /** T·heads·M·D for x [T, heads·D] and w [M, D]. */
    private static double favorWork(Tensor x, Tensor w, int heads) {
        return (double) x.rows() * heads * w.rows() * w.cols();
    }

    private static double bytesOf(Tensor t) {
        return (double) t.numel() * t.dtype().bytes();
    }

    private static long largest(Object[] args) {
        long n = 0;
        for (Tensor t : operands(args)) {
            n = Math.max(n, t.numel());
        }
        return n;
    }

    /** An operand's place in memory: tensors that alias it name the same one. */
    private record Region(Storage storage, int offset, int numel) {
    }

    /** The distinct tensors among the arguments, alone, in lists or in a {@link Varlen}. */
    private static List<Tensor> operands(Object[] args) {
        Set<Region> seen = new HashSet<>();
        List<Tensor> out = new java.util.ArrayList<>();
        for (Object a : args) {
            collect(a, seen, out);
        }
        return out;
    }

    private static void collect(Object a, Set<Region> seen, List<Tensor> out) {
        if (a instanceof Tensor t) {
            if (seen.add(new Region(t.storage(), t.offset(), t.numel()))) {
                out.add(t);
            }
        } else if (a instanceof Varlen v) {
            collect(v.device(), seen, out);
        } else if (a instanceof List<?> list) {
            for (Object o : list) {
                collect(o, seen, out);
            }
        }
    }

    @Override
    Device base() {
        return inner.base();
    }

    @Override
    public Kind kind() {
        return inner.kind();
    }

    @Override
    public int ordinal() {
        return inner.ordinal();
    }

    @Override
    public Backend backend() {
        return backend;
    }

    @Override
    public int threads() {
        return inner.threads();
    }

    @Override
    public Fence fence() {
        return inner.fence();
    }

    @Override
    protected Storage newStorage(DType dtype, int length) {
        return inner.newStorage(dtype, length);
    }

    @Override
    protected void shutdown() {
        inner.close();
    }
}
