package org.kindling.api;

import java.util.Map;
import java.util.TreeMap;
import org.kindling.models.train.StepResult;

/**
 * One logged training step, as a line of the run's {@code metrics.jsonl}.
 *
 * @param step the step
 * @param loss mean next-token loss of the step's batch
 * @param lr learning rate
 * @param gradNorm gradient norm before clipping
 * @param tokensPerSecond training throughput
 * @param evalLoss mean loss over the eval data after this step ({@code eval_loss}); NaN at steps that were not evaluated
 * @param layerMetrics the layers' named metrics (e.g. {@code moe_balance_loss}) this step logged; a metric logged as null (not finite) is absent
 */
public record MetricRow(int step, double loss, double lr, double gradNorm, double tokensPerSecond, double evalLoss,
                        Map<String, Double> layerMetrics) {
    /** The fields every logged step has a column for; the others are layer metrics. */
    static final java.util.Set<String> FIXED = java.util.Set.of("step", "loss", "lr", "grad_norm", "tokens_per_s",
            StepResult.EVAL_LOSS);

    public MetricRow {
        layerMetrics = java.util.Collections.unmodifiableMap(new TreeMap<>(layerMetrics));
    }
}
