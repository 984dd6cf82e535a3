package org.kindling.models.train;

/** Training stopped because the loss or a gradient became NaN or infinite. */
public final class NonFiniteException extends RuntimeException {
    private final int step;
    private final String parameter;

    public NonFiniteException(int step, double loss, String parameter) {
        super("step " + step + ": " + (Double.isFinite(loss) ? "loss " + loss + " is finite but " : "loss is " + loss + "; ")
                + (parameter == null ? "every gradient is finite" : "first non-finite gradient in " + parameter));
        this.step = step;
        this.parameter = parameter;
    }

    /** Stopped in the forward pass: a layer met a non-finite value where it must decide on it (an MoE router). */
    public NonFiniteException(int step, String what) {
        super("step " + step + ": " + what);
        this.step = step;
        this.parameter = null;
    }

    public int step() {
        return step;
    }

    /** The first parameter (in layer order) whose gradient holds NaN or ±∞, or null. */
    public String parameter() {
        return parameter;
    }
}
