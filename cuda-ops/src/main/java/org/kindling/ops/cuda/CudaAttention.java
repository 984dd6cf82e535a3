package org.kindling.ops.cuda;

import static org.kindling.ops.KernelChecks.numel;
import static org.kindling.ops.cuda.Cuda.check;

import java.util.HashMap;
import java.util.Map;
import jcuda.driver.CUdeviceptr;
import jcuda.driver.CUfunction;
import jcuda.driver.CUfunction_attribute;
import jcuda.driver.CUmodule;
import jcuda.driver.JCudaDriver;
import org.kindling.ops.Attention;
import org.kindling.ops.BlockMask;
import org.kindling.ops.DType;
import org.kindling.ops.Tensor;
import org.kindling.ops.Varlen;

/**
 * attention.cu on one device: FlashAttention-2 forward and backward over packed variable-length
 * sequences (fp32, head dim up to {@link #MAX_HEAD_DIM}, causal, grouped-query, block-sparse masks
 * on the GPU), and the bias gradient's column sums. The same argument checks as the CPU backend
 * ({@link Attention#check}, which refuses anything but F32, as the CPU does). The backward writes
 * every gradient element from one thread in a fixed order (see attention.cu), so it is deterministic.
 */
final class CudaAttention {
    /** attention.cu's ATT_TILE, ATT_THREADS (also the elementwise kernels' block) and 4·ATT_DPT. */
    private static final int TILE = 64;
    private static final int THREADS = 256;
    static final int MAX_HEAD_DIM = 128;
    /** The grid's z limit; the kernels loop over sequences beyond it. */
    private static final int MAX_GRID_Z = 65535;
    /** Grid-stride loops cover the rest; more blocks than this only adds scheduling. */
    private static final long MAX_BLOCKS = 1 << 16;
    static final String[] FUNCTIONS = {"attention_forward_f32", "attention_row_dot_f32", "attention_backward_dkdv_f32",
        "attention_backward_dq_f32", "add_column_sums_f32"};

    private final CudaDevice device;
    private final Map<String, CUfunction> functions = new HashMap<>();

    CudaAttention(CudaDevice device, CUmodule module) {
        this.device = device;
        for (String name : FUNCTIONS) {
            CUfunction f = new CUfunction();
            check(JCudaDriver.cuModuleGetFunction(f, module, name), "cuModuleGetFunction(" + name + ")");
            functions.put(name, f);
        }
        // The tiles of the widest heads need more than the default 48 KiB of shared memory per block.
        for (String name : new String[] {"attention_forward_f32", "attention_backward_dkdv_f32", "attention_backward_dq_f32"}) {
            check(JCudaDriver.cuFuncSetAttribute(functions.get(name),
                    CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, sharedBytes(name, MAX_HEAD_DIM)),
                    "cuFuncSetAttribute(" + name + ", max dynamic shared memory)");
        }
    }

    /** Dynamic shared memory of a kernel: its tiles of TILE rows padded to hs + 1 floats, and its score tiles. */
    private static int sharedBytes(String kernel, int hs) {
        int tile = TILE * (hs + 1);
        int scores = TILE * (TILE + 1);
        int floats = switch (kernel) {
            case "attention_forward_f32" -> 3 * tile + scores;
            case "attention_backward_dkdv_f32" -> 4 * tile + 2 * scores;
            case "attention_backward_dq_f32" -> 4 * tile + scores;
            default -> throw new IllegalArgumentException(kernel + " uses no dynamic shared memory");
        };
        return floats * Float.BYTES;
    }

    private CUdeviceptr base(Tensor t, DType want, String what) {
        return device.storage(t, want, what).ptr();
    }

    /** The checks every attention call makes beyond the CPU's: this device, and head dims the kernels' registers hold. */
    private Attention.Batch checkCall(Attention a, Tensor q, Tensor k, Tensor v, Varlen cuQ, Varlen cuK) {
        Attention.Batch batch = a.check(q, k, v, cuQ, cuK);
        if (a.headDim() > MAX_HEAD_DIM) {
            throw new IllegalArgumentException("attention on " + device + " supports head dims up to " + MAX_HEAD_DIM
                    + ", got " + a.headDim());
        }
        device.storage(cuQ.device(), DType.I32, "cu_seqlens_q");
        device.storage(cuK.device(), DType.I32, "cu_seqlens_k");
        return batch;
    }

    /** A block mask as one int per (query block, key block) on the device, or null without a mask. */
    private Tensor uploadMask(BlockMask mask) {
        if (mask == null) {
            return null;
        }
        int n = mask.blocks();
        int[] allowed = new int[n * n];
        for (int i = 0; i < n; i++) {
            for (int j = 0; j < n; j++) {
                allowed[i * n + j] = mask.allowed(i, j) ? 1 : 0;
            }
        }
        return device.fromInts(allowed, n * n);
    }

    /** The kernels' trailing mask arguments: pointer, offset, blocks per side, block size. */
    private Object[] maskArgs(Tensor m, BlockMask mask) {
        return m == null ? new Object[] {new CUdeviceptr(), 0, 0, 1}
                : new Object[] {base(m, DType.I32, "block mask"), m.offset(), mask.blocks(), mask.blockSize()};
    }

    /** One block of THREADS threads per (x, y, z) of the grid. */
    private void launch(String name, int gx, int gy, int gz, int shared, Object... args) {
        if (gx == 0 || gy == 0 || gz == 0) {
            return;
        }
        device.makeCurrent();
        check(JCudaDriver.cuLaunchKernel(functions.get(name), gx, gy, gz, THREADS, 1, 1, shared, device.stream(),
                Cuda.params(name, args), null), "launch of " + name);
    }

    /** One thread per element of a grid-stride loop over n. */
    private void launchElementwise(String name, long n, Object... args) {
        launch(name, (int) Math.min((n + THREADS - 1) / THREADS, MAX_BLOCKS), 1, 1, 0, args);
    }

    private static Object[] concat(Object[] a, Object[] b) {
        Object[] out = new Object[a.length + b.length];
        System.arraycopy(a, 0, out, 0, a.length);
        System.arraycopy(b, 0, out, a.length, b.length);
        return out;
    }

    void forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, Varlen cuQ, Varlen cuK, Attention a) {
        Attention.Batch batch = checkCall(a, q, k, v, cuQ, cuK);
        a.checkOutputs(batch, out, lse);
        Object[] args = {base(out, DType.F32, "attention out"), out.offset(), base(lse, DType.F32, "attention lse"),
            lse.offset(), base(q, DType.F32, "q"), q.offset(), base(k, DType.F32, "k"), k.offset(),
            base(v, DType.F32, "v"), v.offset(), base(cuQ.device(), DType.I32, "cu_seqlens_q"), cuQ.device().offset(),
            base(cuK.device(), DType.I32, "cu_seqlens_k"), cuK.device().offset(), batch.sequences(), batch.totalQ(),
            a.heads(), a.kvHeads(), a.headDim(), a.softmaxScale(), a.causal() ? 1 : 0};
        try (Tensor mask = uploadMask(a.mask())) {
            launch("attention_forward_f32", tiles(batch.maxQ()), a.heads(), Math.min(batch.sequences(), MAX_GRID_Z),
                    sharedBytes("attention_forward_f32", a.headDim()), concat(args, maskArgs(mask, a.mask())));
        }
    }

    void backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,
                  Varlen cuQ, Varlen cuK, Attention a) {
        Attention.Batch batch = checkCall(a, q, k, v, cuQ, cuK);
        a.checkOutputs(batch, out, lse);
        a.checkOutputs(batch, dout, lse);
        a.checkOutputs(batch, dq, lse);
        if (dk.numel() != k.numel() || dv.numel() != v.numel()) {
            throw new IllegalArgumentException("attention dk " + dk + " and dv " + dv + " must be shaped like k " + k);
        }
        CUdeviceptr pdq = base(dq, DType.F32, "attention dq");
        CUdeviceptr pdk = base(dk, DType.F32, "attention dk");
        CUdeviceptr pdv = base(dv, DType.F32, "attention dv");
        CUdeviceptr pdo = base(dout, DType.F32, "attention dout");
        CUdeviceptr pq = base(q, DType.F32, "q");
        CUdeviceptr pk = base(k, DType.F32, "k");
        CUdeviceptr pv = base(v, DType.F32, "v");
        CUdeviceptr pl = base(lse, DType.F32, "attention lse");
        CUdeviceptr pcq = base(cuQ.device(), DType.I32, "cu_seqlens_q");
        CUdeviceptr pck = base(cuK.device(), DType.I32, "cu_seqlens_k");
        int totalQ = batch.totalQ();
        int sequences = Math.min(batch.sequences(), MAX_GRID_Z);
        try (Tensor rowDot = device.allocate(DType.F32, a.heads(), totalQ); Tensor mask = uploadMask(a.mask())) {
            CUdeviceptr pd = base(rowDot, DType.F32, "row dots");
            launchElementwise("attention_row_dot_f32", (long) totalQ * a.heads(), pd, pdo, dout.offset(),
                    base(out, DType.F32, "attention out"), out.offset(), totalQ, a.heads(), a.headDim());
            Object[] shape = {pcq, cuQ.device().offset(), pck, cuK.device().offset(), batch.sequences(), totalQ, a.heads(),
                a.kvHeads(), a.headDim(), a.softmaxScale(), a.causal() ? 1 : 0};
            Object[] masked = maskArgs(mask, a.mask());
            launch("attention_backward_dkdv_f32", tiles(batch.maxK()), a.kvHeads(), sequences,
                    sharedBytes("attention_backward_dkdv_f32", a.headDim()), concat(concat(new Object[] {pdk, dk.offset(), pdv,
                        dv.offset(), pdo, dout.offset(), pq, q.offset(), pk, k.offset(), pv, v.offset(), pl, lse.offset(), pd},
                        shape), masked));
            launch("attention_backward_dq_f32", tiles(batch.maxQ()), a.heads(), sequences,
                    sharedBytes("attention_backward_dq_f32", a.headDim()), concat(concat(new Object[] {pdq, dq.offset(), pdo,
                        dout.offset(), pq, q.offset(), pk, k.offset(), pv, v.offset(), pl, lse.offset(), pd}, shape), masked));
        }
    }

    private static int tiles(int n) {
        return (n + TILE - 1) / TILE;
    }

    void addColumnSums(Tensor out, Tensor x) {
        int rows = x.rows();
        int cols = x.cols();
        numel(out, "addColumnSums out", cols);
        CUdeviceptr po = base(out, DType.F32, "addColumnSums out");
        CUdeviceptr px = base(x, DType.F32, "addColumnSums x");
        if (rows > 0) {
            launchElementwise("add_column_sums_f32", cols, po, out.offset(), px, x.offset(), rows, cols);
        }
    }
}
