package org.kindling.api;

/**
 * What {@link EvalBuilder#run()} measured.
 *
 * @param loss mean next-token loss over the predicted tokens
 * @param perplexity e to the loss
 * @param tokens tokens predicted
 * @param batches batches read
 * @param checkpoint the checkpoint evaluated ({@code step-N})
 */
public record EvalResult(double loss, double perplexity, long tokens, int batches, String checkpoint) {
}
