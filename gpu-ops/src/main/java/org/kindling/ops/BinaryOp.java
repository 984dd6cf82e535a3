package org.kindling.ops;

/** Elementwise functions of two arguments. */
public enum BinaryOp {
    ADD, SUB, MUL, DIV, MAX, MIN;

    /** The function in double precision: the reference every backend is tested against. */
    public double apply(double a, double b) {
        return switch (this) {
            case ADD -> a + b;
            case SUB -> a - b;
            case MUL -> a * b;
            case DIV -> a / b;
            case MAX -> Math.max(a, b);
            case MIN -> Math.min(a, b);
        };
    }
}
