package org.kindling.api;

import java.io.IOException;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.TreeSet;
import org.apache.hadoop.conf.Configuration;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.StructType;
import org.kindling.models.train.StepResult;
import org.kindling.report.RunMetrics;
import org.kindling.train.RunDir;

/**
 * A training run: its directory and what it holds after training. {@code kindling report} and the
 * evaluate, generate and export builders take runs by their directory, {@link #runDir()}.
 *
 * @param runDir the run directory (any Hadoop path)
 * @param finalStep the newest step trained (0 before any)
 * @param latestCheckpoint the checkpoint LATEST names ({@code step-N}), or null when there is none yet
 * @param metrics every logged step of the run's metrics.jsonl, earlier calls' included, oldest first
 * @param trainedSteps the steps the call that returned this handle trained, in order (none when opened, or when the run
 *     already was at max_steps), with their timings
 */
public record TrainedRun(String runDir, int finalStep, String latestCheckpoint, List<MetricRow> metrics, List<StepResult> trainedSteps) {
    public TrainedRun {
        metrics = List.copyOf(metrics);
        trainedSteps = List.copyOf(trainedSteps);
    }

    /** The run in {@code runDir} as it is now. */
    public static TrainedRun open(String runDir, Configuration conf) throws IOException {
        return open(runDir, conf, List.of());
    }

    static TrainedRun open(String runDir, Configuration conf, List<StepResult> trainedSteps) throws IOException {
        RunDir dir = new RunDir(runDir, conf);
        // The report's reader: the same checks, and the same tolerance of a last line cut short.
        List<MetricRow> rows = dir.hasMetrics() ? rows(RunMetrics.read(runDir, conf)) : List.of();
        String latest = dir.checkpoints().latest().orElse(null);
        int checkpointStep = latest == null ? 0 : Integer.parseInt(latest.substring("step-".length()));
        int logged = rows.isEmpty() ? 0 : rows.get(rows.size() - 1).step();
        return new TrainedRun(runDir, Math.max(checkpointStep, logged), latest, rows, trainedSteps);
    }

    private static List<MetricRow> rows(RunMetrics m) {
        TreeSet<Integer> steps = new TreeSet<>();
        Map<String, Map<Integer, Double>> columns = new HashMap<>();
        for (String f : m.fields()) {
            int[] at = m.steps(f);
            double[] values = m.values(f);
            Map<Integer, Double> column = new HashMap<>();
            for (int i = 0; i < at.length; i++) {
                steps.add(at[i]);
                column.put(at[i], values[i]);
            }
            columns.put(f, column);
        }
        List<MetricRow> rows = new ArrayList<>(steps.size());
        for (int step : steps) {
            Map<String, Double> layers = new TreeMap<>();
            for (Map.Entry<String, Map<Integer, Double>> c : columns.entrySet()) {
                if (!MetricRow.FIXED.contains(c.getKey()) && c.getValue().containsKey(step)) {
                    layers.put(c.getKey(), c.getValue().get(step));
                }
            }
            rows.add(new MetricRow(step, value(columns, "loss", step), value(columns, "lr", step), value(columns, "grad_norm", step),
                    value(columns, "tokens_per_s", step), value(columns, StepResult.EVAL_LOSS, step), layers));
        }
        return rows;
    }

    /** A field's value at a step; NaN where the step did not log it (or logged null). */
    private static double value(Map<String, Map<Integer, Double>> columns, String field, int step) {
        return columns.getOrDefault(field, Map.of()).getOrDefault(step, Double.NaN);
    }

    /**
     * The metrics as a Spark DataFrame: {@code step, loss, lr, grad_norm, tokens_per_s}, then
     * {@code eval_loss} when the run evaluated (null at the steps it did not), then one column per
     * layer metric (sorted by name; null in rows that lack it).
     */
    public Dataset<Row> metricsFrame(SparkSession spark) {
        TreeSet<String> names = new TreeSet<>();
        metrics.forEach(m -> names.addAll(m.layerMetrics().keySet()));
        boolean evaluated = metrics.stream().anyMatch(m -> !Double.isNaN(m.evalLoss()));
        StructType schema = new StructType().add("step", DataTypes.IntegerType, false).add("loss", DataTypes.DoubleType)
                .add("lr", DataTypes.DoubleType).add("grad_norm", DataTypes.DoubleType).add("tokens_per_s", DataTypes.DoubleType);
        if (evaluated) {
            schema = schema.add(StepResult.EVAL_LOSS, DataTypes.DoubleType);
        }
        for (String name : names) {
            schema = schema.add(name, DataTypes.DoubleType);
        }
        List<Row> rows = new ArrayList<>(metrics.size());
        for (MetricRow m : metrics) {
            Object[] v = new Object[schema.size()];
            v[0] = m.step();
            v[1] = m.loss();
            v[2] = m.lr();
            v[3] = m.gradNorm();
            v[4] = m.tokensPerSecond();
            int i = 5;
            if (evaluated) {
                v[i++] = Double.isNaN(m.evalLoss()) ? null : m.evalLoss();
            }
            for (String name : names) {
                Map<String, Double> layer = m.layerMetrics();
                v[i++] = layer.get(name);
            }
            rows.add(RowFactory.create(v));
        }
        return spark.createDataFrame(rows, schema);
    }
}
