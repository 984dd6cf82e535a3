package org.kindling.models.train;

/**
 * What one optimizer step did.
 *
 * @param step steps completed, counting this one
 * @param loss mean next-token loss over the step's predicted tokens
 * @param lr learning rate applied
 * @param gradNorm global gradient norm before clipping
 * @param tokens tokens processed (all micro-batches of all workers)
 * @param seconds wall time of the step
 */
public record StepResult(int step, double loss, double lr, double gradNorm, long tokens, double seconds)
        implements java.io.Serializable {
    public double tokensPerSecond() {
        return tokens / seconds;
    }
}
