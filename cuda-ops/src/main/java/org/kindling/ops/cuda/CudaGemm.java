package org.kindling.ops.cuda;

import static org.kindling.ops.KernelChecks.checkSpan;
import static org.kindling.ops.KernelChecks.gemmInputs;
import static org.kindling.ops.cuda.Cuda.check;

import java.util.List;
import jcuda.driver.CUdeviceptr;
import jcuda.driver.CUfunction;
import jcuda.driver.CUmodule;
import jcuda.driver.JCudaDriver;
import org.kindling.ops.DType;
import org.kindling.ops.Gemm;
import org.kindling.ops.GroupedGemm;
import org.kindling.ops.Tensor;

/**
 * The GEMMs of gemm.cu on one device: {@code gemm_f32} for F32 operands, {@code gemm_bf16} (tensor
 * cores, fp32 accumulation) for BF16 operands; C is F32 either way. One block per 128×128 tile of
 * C, each K loop in a fixed order, so results are deterministic. The same layout checks as the
 * CPU backend; a grouped GEMM runs one product per group, in group order, as the CPU does.
 */
final class CudaGemm {
    /** gemm.cu's GEMM_THREADS and GEMM_BM / GEMM_BN. */
    private static final int THREADS = 256;
    private static final int TILE = 128;
    /** The grid's y and z limits; the kernels loop over tile rows and batch entries beyond them. */
    private static final int MAX_GRID_YZ = 65535;

    private final CudaDevice device;
    private final CUfunction f32 = new CUfunction();
    private final CUfunction bf16 = new CUfunction();

    CudaGemm(CudaDevice device, CUmodule module) {
        this.device = device;
        check(JCudaDriver.cuModuleGetFunction(f32, module, "gemm_f32"), "cuModuleGetFunction(gemm_f32)");
        check(JCudaDriver.cuModuleGetFunction(bf16, module, "gemm_bf16"), "cuModuleGetFunction(gemm_bf16)");
    }

    void gemm(Gemm g, Tensor c, Tensor a, Tensor b) {
        DType in = gemmInputs(a, b, "gemm");
        checkSpan(a, "A", g.spanA(), g.strideA(), g.batch());
        checkSpan(b, "B", g.spanB(), g.strideB(), g.batch());
        checkSpan(c, "C", g.spanC(), g.strideC(), g.batch());
        launch(g, in, c, a, b, "gemm ");
    }

    void gemmBatched(Gemm g, List<Tensor> c, List<Tensor> a, List<Tensor> b) {
        if (c.size() != a.size() || c.size() != b.size()) {
            throw new IllegalArgumentException("gemmBatched needs as many A (" + a.size() + ") and B (" + b.size()
                    + ") as C (" + c.size() + ") matrices");
        }
        if (g.batch() != 1) {
            throw new IllegalArgumentException("gemmBatched takes a single-matrix layout; the lists give the batch");
        }
        DType[] in = new DType[c.size()];
        // Every triple is checked before the first launch, so a bad one leaves every C unchanged.
        for (int i = 0; i < c.size(); i++) {
            in[i] = gemmInputs(a.get(i), b.get(i), "gemmBatched[" + i + "]");
            checkSpan(a.get(i), "A[" + i + "]", g.spanA(), 0, 1);
            checkSpan(b.get(i), "B[" + i + "]", g.spanB(), 0, 1);
            checkSpan(c.get(i), "C[" + i + "]", g.spanC(), 0, 1);
            device.storage(c.get(i), DType.F32, "gemmBatched C[" + i + "]");
            device.storage(a.get(i), in[i], "gemmBatched A[" + i + "]");
            device.storage(b.get(i), in[i], "gemmBatched B[" + i + "]");
        }
        for (int i = 0; i < c.size(); i++) {
            launch(g, in[i], c.get(i), a.get(i), b.get(i), "gemmBatched[" + i + "] ");
        }
    }

    void groupedGemm(Gemm g, Tensor c, Tensor a, Tensor b, Tensor offsets) {
        GroupedGemm gg = GroupedGemm.check(g, c, a, b, offsets);
        for (int e = 0; e < gg.experts(); e++) {
            if (gg.runs(e)) {
                gemm(gg.group(e), gg.c(c, e), gg.a(a, e), gg.b(b, e));
            }
        }
    }

    private void launch(Gemm g, DType in, Tensor c, Tensor a, Tensor b, String what) {
        CUdeviceptr pc = device.storage(c, DType.F32, what + "C").ptr();
        CUdeviceptr pa = device.storage(a, in, what + "A").ptr();
        CUdeviceptr pb = device.storage(b, in, what + "B").ptr();
        if (g.m() == 0 || g.n() == 0) {
            return;
        }
        int tilesM = (g.m() + TILE - 1) / TILE;
        int tilesN = (g.n() + TILE - 1) / TILE;
        // A stride matters only between batch entries; with one entry it may be anything, so pass 0.
        boolean many = g.batch() > 1;
        String name = in == DType.BF16 ? "gemm_bf16" : "gemm_f32";
        device.makeCurrent();
        check(JCudaDriver.cuLaunchKernel(in == DType.BF16 ? bf16 : f32, tilesN, Math.min(tilesM, MAX_GRID_YZ),
                Math.min(g.batch(), MAX_GRID_YZ), THREADS, 1, 1, 0, device.stream(),
                Cuda.params(name, g.transA() ? 1 : 0, g.transB() ? 1 : 0, g.m(), g.n(), g.k(), g.alpha(), g.beta(),
                        g.batch(), pa, a.offset(), g.lda(), many ? g.strideA() : 0L, pb, b.offset(), g.ldb(),
                        many ? g.strideB() : 0L, pc, c.offset(), g.ldc(), many ? g.strideC() : 0L), null),
                "launch of " + name);
    }
}
