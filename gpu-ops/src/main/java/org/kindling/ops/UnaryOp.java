package org.kindling.ops;

/** Elementwise functions of one argument. */
public enum UnaryOp {
    COPY, NEG, ABS, SQUARE, SQRT, RECIPROCAL, EXP, LOG, TANH, SIGMOID, RELU;

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
        };
    }
}
