package org.kindling.ops;

/**
 * A kernel that decides on its input's values (top-k's choice of experts) met a NaN there: the
 * values upstream stopped being finite. Training turns it into its non-finite stop.
 */
public final class NonFiniteInputException extends IllegalArgumentException {
    public NonFiniteInputException(String message) {
        super(message);
    }
}
