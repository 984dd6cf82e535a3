package org.kindling.models.nn;

import java.util.Locale;
import org.kindling.ops.DType;

/**
 * The element type of the model's GEMM operands, selected per run ({@code precision}). Under
 * {@link #BF16} every GEMM of the model takes bf16 weights (shadow copies of the fp32 masters,
 * see {@link Params#setPrecision}) and bf16-rounded activations, accumulating in fp32 into fp32
 * outputs; gradients, master weights, optimizer state, norms, softmax, attention and the loss stay fp32.
 */
public enum Precision {
    FP32(DType.F32),
    BF16(DType.BF16);

    private final DType gemmType;

    Precision(DType gemmType) {
        this.gemmType = gemmType;
    }

    /** The dtype of GEMM operands (weights and the activations multiplied with them). */
    public DType gemmType() {
        return gemmType;
    }

    /** Its config spelling: {@code fp32} or {@code bf16}. */
    public String key() {
        return name().toLowerCase(Locale.ROOT);
    }

    /** {@code fp32} or {@code bf16}; anything else is an error naming {@code precision}. */
    public static Precision parse(String s) {
        for (Precision p : values()) {
            if (p.key().equals(s)) {
                return p;
            }
        }
        throw new IllegalArgumentException("precision must be fp32 or bf16, got '" + s + "'");
    }
}
