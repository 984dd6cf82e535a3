package org.kindling.api;

import java.io.IOException;
import java.util.Arrays;
import org.apache.spark.sql.SparkSession;
import org.kindling.report.RunReport;

/**
 * Kindling from Java code, a notebook or a Spark application: the {@code kindling} commands as
 * builders that return typed results. The session is the caller's: Kindling never stops it.
 *
 * <pre>{@code
 * PreparedData d = KindlingApi.prepare(spark).texts(df, "text").vocabSize(512).output(dir).run();
 * TrainedRun r = KindlingApi.train(spark).preset("tiny").data(d).runDir(run).set("max_steps", 50).run();
 * r.metricsFrame(spark).show();
 * List<String> s = KindlingApi.generate(r).prompt("The").maxNewTokens(40).run();
 * }</pre>
 *
 * <p>Every builder checks its options in {@code run()} and throws {@link InvalidOptionException}
 * naming the option. {@link #report} charts runs for a notebook ({@code RunReport.chart}) or
 * writes the page {@code kindling report} writes ({@code RunReport.write}).
 */
public final class KindlingApi {
    private KindlingApi() {
    }

    /** Prepares a corpus (files or a DataFrame's text column) into a dataset on {@code spark}. */
    public static PrepareBuilder prepare(SparkSession spark) {
        return new PrepareBuilder(spark);
    }

    /** Trains a model on {@code spark}'s executors in a barrier stage. */
    public static TrainBuilder train(SparkSession spark) {
        return new TrainBuilder(spark);
    }

    /** A run already on disk (any Hadoop path, reached through {@code spark}'s Hadoop configuration). */
    public static TrainedRun open(SparkSession spark, String runDir) throws IOException {
        return TrainedRun.open(runDir, spark.sparkContext().hadoopConfiguration());
    }

    /** Evaluates a run's checkpoint. */
    public static EvalBuilder evaluate(TrainedRun run) {
        return evaluate(run.runDir());
    }

    /** Evaluates the checkpoint of the run in {@code runDir}. */
    public static EvalBuilder evaluate(String runDir) {
        return new EvalBuilder(runDir);
    }

    /** Samples from a run's checkpoint. */
    public static GenerateBuilder generate(TrainedRun run) {
        return generate(run.runDir());
    }

    /** Samples from the checkpoint of the run in {@code runDir}. */
    public static GenerateBuilder generate(String runDir) {
        return new GenerateBuilder(runDir);
    }

    /** A report over runs, the first compared with the others (reached through {@code spark}'s Hadoop configuration). */
    public static RunReport report(SparkSession spark, TrainedRun... runs) throws IOException {
        return report(spark, Arrays.stream(runs).map(TrainedRun::runDir).toArray(String[]::new));
    }

    /** A report over the runs in {@code runDirs} (any Hadoop paths), the first compared with the others. */
    public static RunReport report(SparkSession spark, String... runDirs) throws IOException {
        return RunReport.read(spark.sparkContext().hadoopConfiguration(), runDirs);
    }

    /** Exports a run's checkpoint for Hugging Face transformers. */
    public static ExportBuilder export(TrainedRun run) {
        return export(run.runDir());
    }

    /** Exports the checkpoint of the run in {@code runDir}. */
    public static ExportBuilder export(String runDir) {
        return new ExportBuilder(runDir);
    }
}
