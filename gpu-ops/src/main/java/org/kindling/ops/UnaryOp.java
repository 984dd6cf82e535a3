package org.kindling.ops;

/** Elementwise functions of one argument. */
public enum UnaryOp {
    COPY, NEG, ABS, SQUARE, SQRT, RECIPROCAL, EXP, LOG, TANH, SIGMOID, RELU,
    /** elu(x) + 1: x + 1 for x &gt; 0, else exp(x); positive everywhere, linear attention's feature map. */
    ELU_PLUS_ONE,
    /** cos x: random Fourier features (a sine is a cosine shifted by −π/2). */
    COS;

    /** The function in double precision: the reference every backend is tested against. */
    public double apply(double x) {
        return switch (this) {
            case COPY -> x;
            case NEG -> -x;
            case ABS -> Math.abs(x);
            case SQUARE -> x * x;
            case SQRT -> Math.sqrt(x);
            case RECIPROCAL -> 1.0 / x;
            case EXP -> Math.exp(x);
            case LOG -> Math.log(x);
            case TANH -> Math.tanh(x);
            case SIGMOID -> 1.0 / (1.0 + Math.exp(-x));
            case RELU -> x > 0 ? x : 0.0;
            case ELU_PLUS_ONE -> x > 0 ? x + 1 : Math.exp(x);
            case COS -> Math.cos(x);
        };
    }

    /**
     * f′(x) in double precision, the reference for {@link Backend#unaryBackward}. Where f has no
     * derivative the usual (PyTorch) convention holds: ABS and RELU take 0 at x = 0 (a
     * subgradient); at 0 SQRT and LOG give +∞ and RECIPROCAL −∞ (the formula's limit). ELU_PLUS_ONE
     * is differentiable at 0 (both sides give 1).
     */
    public double derivative(double x) {
        return switch (this) {
            case COPY -> 1.0;
            case NEG -> -1.0;
            case ABS -> x > 0 ? 1.0 : x < 0 ? -1.0 : 0.0;
            case SQUARE -> 2 * x;
            case SQRT -> 0.5 / Math.sqrt(x);
            case RECIPROCAL -> -1.0 / (x * x);
            case EXP -> Math.exp(x);
            case LOG -> 1.0 / x;
            case TANH -> {
                double t = Math.tanh(x);
                yield 1 - t * t;
            }
            case SIGMOID -> {
                double s = 1.0 / (1.0 + Math.exp(-x));
                yield s * (1 - s);
            }
            case RELU -> x > 0 ? 1.0 : 0.0;
            case ELU_PLUS_ONE -> x > 0 ? 1.0 : Math.exp(x);
            case COS -> -Math.sin(x);
        };
    }
}
