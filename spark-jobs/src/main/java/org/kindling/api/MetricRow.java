package org.kindling.api;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.util.Iterator;
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
 * @param layerMetrics the layers' named metrics (e.g. {@code moe_balance_loss}); NaN where the file has null
 */
public record MetricRow(int step, double loss, double lr, double gradNorm, double tokensPerSecond, double evalLoss,
                        Map<String, Double> layerMetrics) {
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final java.util.Set<String> FIXED = java.util.Set.of("step", "loss", "lr", "grad_norm", "tokens_per_s",
            StepResult.EVAL_LOSS);

    public MetricRow {
        layerMetrics = java.util.Collections.unmodifiableMap(new TreeMap<>(layerMetrics));
    }

    /** Parses a metrics.jsonl line; {@code where} names it in the error of a malformed one. */
    static MetricRow parse(String line, String where) {
        JsonNode n;
        try {
            n = JSON.readTree(line);
        } catch (java.io.IOException e) {
            throw new IllegalArgumentException(where + " is not a JSON object: " + e.getMessage(), e);
        }
        if (n == null || !n.isObject() || !n.path("step").canConvertToInt()) {
            throw new IllegalArgumentException(where + " has no integer \"step\": " + line);
        }
        Map<String, Double> layers = new TreeMap<>();
        for (Iterator<Map.Entry<String, JsonNode>> it = n.fields(); it.hasNext();) {
            Map.Entry<String, JsonNode> e = it.next();
            if (!FIXED.contains(e.getKey())) {
                layers.put(e.getKey(), number(e.getValue()));
            }
        }
        return new MetricRow(n.get("step").asInt(), number(n.get("loss")), number(n.get("lr")), number(n.get("grad_norm")),
                number(n.get("tokens_per_s")), number(n.get(StepResult.EVAL_LOSS)), layers);
    }

    private static double number(JsonNode v) {
        return v == null || !v.isNumber() ? Double.NaN : v.asDouble();
    }
}
