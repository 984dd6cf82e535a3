package org.kindling.models.train;

import java.util.Collections;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.SortedMap;
import java.util.TreeMap;
import java.util.regex.Pattern;

/**
 * What one optimizer step did.
 *
 * <p>{@code metrics} are the named scalars that layers report (a mixture of experts' load-balancing
 * loss, say). They travel by name to the coordinator, the progress line, {@code metrics.jsonl} and the
 * bench outputs, so a new layer adds a metric without changing any of them. Names are checked here,
 * and only here ({@link #checkName}): the coordinator's wire reader validates through it too.
 *
 * @param step steps completed, counting this one
 * @param loss mean next-token loss over the step's predicted tokens
 * @param lr learning rate applied
 * @param gradNorm global gradient norm before clipping
 * @param tokens tokens processed (all micro-batches of all workers)
 * @param seconds wall time of the step
 * @param metrics layers' named scalars, in name order (an unmodifiable copy)
 */
public record StepResult(int step, double loss, double lr, double gradNorm, long tokens, double seconds,
                         SortedMap<String, Double> metrics) {
    /**
     * The metric of a step after which the run evaluated: the mean next-token loss over the eval
     * data's tokens (all workers' slices together), in evaluation mode with the step's weights.
     */
    public static final String EVAL_LOSS = "eval_loss";
    /** The most metrics one step may carry; the coordinator's reader caps its count by it before allocating. */
    public static final int MAX_METRICS = 64;
    /** The longest metric name. */
    public static final int MAX_NAME = 64;
    private static final Pattern NAME = Pattern.compile("[a-z][a-z0-9_]*");
    /** The fields every metrics.jsonl line already has: a metric of the same name would repeat a key. */
    private static final List<String> RESERVED = List.of("step", "loss", "lr", "grad_norm", "tokens", "seconds", "tokens_per_s");

    public StepResult {
        if (metrics == null) {
            throw new IllegalArgumentException("step " + step + ": metrics must not be null (pass an empty map)");
        }
        if (metrics.size() > MAX_METRICS) {
            throw new IllegalArgumentException("step " + step + " has " + metrics.size() + " metrics; at most " + MAX_METRICS);
        }
        TreeMap<String, Double> copy = new TreeMap<>();
        for (Map.Entry<String, Double> e : metrics.entrySet()) {
            checkName(e.getKey());
            if (e.getValue() == null) {
                throw new IllegalArgumentException("metric " + e.getKey() + " has no value");
            }
            copy.put(e.getKey(), e.getValue());
        }
        metrics = Collections.unmodifiableSortedMap(copy);
    }

    /** A step without layer metrics. */
    public StepResult(int step, double loss, double lr, double gradNorm, long tokens, double seconds) {
        this(step, loss, lr, gradNorm, tokens, seconds, Collections.emptySortedMap());
    }

    /**
     * Refuses a metric name that is not {@code [a-z][a-z0-9_]*}, longer than {@link #MAX_NAME}, or one
     * of a step's own fields.
     */
    public static void checkName(String name) {
        if (name == null) {
            throw new IllegalArgumentException("a metric has no name");
        }
        if (name.length() > MAX_NAME) {
            throw new IllegalArgumentException("metric name " + name.substring(0, MAX_NAME) + "… is " + name.length()
                    + " characters long; at most " + MAX_NAME);
        }
        if (!NAME.matcher(name).matches()) {
            throw new IllegalArgumentException("metric name '" + name + "' must match [a-z][a-z0-9_]*");
        }
        if (RESERVED.contains(name)) {
            throw new IllegalArgumentException("metric name " + name + " is taken by a field of every step ("
                    + String.join(", ", RESERVED) + ")");
        }
    }

    /** This step with metric {@code name} set to {@code value}. */
    public StepResult withMetric(String name, double value) {
        TreeMap<String, Double> more = new TreeMap<>(metrics);
        more.put(name, value);
        return new StepResult(step, loss, lr, gradNorm, tokens, seconds, more);
    }

    public double tokensPerSecond() {
        return tokens / seconds;
    }

    /** The metrics for a human-readable line: {@code " | name value"} each, in name order ({@code ""} when there are none). */
    public String metricsText() {
        StringBuilder sb = new StringBuilder();
        metrics.forEach((name, value) -> sb.append(String.format(Locale.ROOT, " | %s %.4g", name, value)));
        return sb.toString();
    }
}
