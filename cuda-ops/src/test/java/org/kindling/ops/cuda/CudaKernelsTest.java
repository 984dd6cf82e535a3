package org.kindling.ops.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.io.InputStream;
import java.lang.reflect.Field;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.kindling.ops.Backend;

/**
 * What runs on the GPU, checked without one: {@link org.kindling.ops.HostFallback} sends a
 * {@link Backend} method to the device when the kernels' class declares a public method with its
 * name, parameter types and return type, so the transformer, MoE, causal-conv, linear-attention,
 * SSM and FAVOR+ kernels must be declared that way; and every kernel {@link CudaKernels}, {@link CudaAttention}
 * and {@link CudaSsm} load by name must be in the fatbin this build compiled.
 */
class CudaKernelsTest {
    private static final List<String> ON_THE_GPU = List.of("softmaxForward", "softmaxBackward", "layerNormForward",
            "layerNormBackward", "geluForward", "geluBackward", "dropoutForward", "dropoutBackward", "embeddingForward",
            "embeddingBackward", "crossEntropyForward", "crossEntropyForwardBackward", "adamW", "unary", "binary", "affine",
            "reduceRows", "fill", "copy", "sumOfSquares", "addSum", "addSumOfSquares", "topK", "topKBackward", "expertOffsets",
            "permutation", "gatherRows", "scatterAddRows", "entryTokens", "capacitySlots", "scaleRows", "uniformNoise",
            "rmsNormForward", "rmsNormBackward", "unaryBackward", "attentionForward", "attentionBackward", "addColumnSums",
            "causalConvForward", "causalConvBackward", "linearAttentionForward", "linearAttentionBackward",
            "linearAttentionStep", "ssmConvForward", "ssmConvBackward", "ssmStep",
            "favorFeatures", "favorFeaturesBackward");

    @Test
    void theTransformerKernelsDoNotFallBackToTheHost() {
        List<String> missing = new ArrayList<>();
        for (String op : ON_THE_GPU) {
            boolean declared = false;
            for (Method m : Backend.class.getMethods()) {
                if (!m.getName().equals(op) || m.isDefault()) {
                    continue;
                }
                declared = true;
                try {
                    Method k = CudaKernels.class.getMethod(op, m.getParameterTypes());
                    if (!Modifier.isPublic(k.getModifiers()) || k.getReturnType() != m.getReturnType()) {
                        missing.add(op + " (not public or a different return type)");
                    }
                } catch (NoSuchMethodException e) {
                    missing.add(op);
                }
            }
            assertTrue(declared, "Backend has no abstract method " + op);
        }
        assertEquals(List.of(), missing, "Backend methods CudaKernels does not implement (they would fall back)");
    }

    @Test
    void everyKernelCudaKernelsLoadsIsInTheFatbin() throws Exception {
        byte[] fatbin;
        try (InputStream in = Cuda.class.getResourceAsStream(Cuda.FATBIN)) {
            assumeTrue(in != null, "this build has no fatbin (nvcc was not on the PATH)");
            fatbin = in.readAllBytes();
        }
        // The cubin's symbol table names each extern "C" kernel; the fatbin holds it uncompressed by default.
        String bytes = new String(fatbin, StandardCharsets.ISO_8859_1);
        Field f = CudaKernels.class.getDeclaredField("FUNCTIONS");
        f.setAccessible(true);
        List<String> functions = new ArrayList<>(List.of((String[]) f.get(null)));
        assertTrue(functions.contains("cross_entropy_f32"));
        assertTrue(functions.contains("moe_permutation"));
        assertTrue(functions.contains("uniform_noise_f32"));
        functions.addAll(List.of(CudaAttention.FUNCTIONS));
        functions.addAll(List.of(CudaSsm.FUNCTIONS));
        assertTrue(functions.contains("linear_attention_backward_f32"));
        for (String name : functions) {
            assertTrue(bytes.contains(name + "\0"), name + " is not in " + Cuda.FATBIN);
        }
        assertFalse(bytes.contains("no_such_kernel_f32\0"));
    }
}
