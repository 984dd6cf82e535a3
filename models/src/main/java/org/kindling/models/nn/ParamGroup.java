package org.kindling.models.nn;

/**
 * How the optimizer treats a set of parameters, as PyTorch's parameter groups do: whether AdamW's
 * decoupled weight decay applies, and a multiplier on the scheduled learning rate (state-space
 * dynamics train slower and without decay, as the S4 and H3 papers train them).
 *
 * @param decay whether weight decay applies
 * @param lrScale multiplier on the learning rate, in (0, 1e3]
 */
public record ParamGroup(boolean decay, double lrScale) {
    /** Matrices: decayed, at the scheduled learning rate. */
    public static final ParamGroup DECAY = new ParamGroup(true, 1.0);
    /** Biases and norms: no decay. */
    public static final ParamGroup NO_DECAY = new ParamGroup(false, 1.0);

    public ParamGroup {
        if (!(lrScale > 0 && lrScale <= 1e3)) {
            throw new IllegalArgumentException("learning-rate multiplier must be in (0, 1000], got " + lrScale);
        }
    }
}
