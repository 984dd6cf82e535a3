package org.kindling.train;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.Serializable;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import org.apache.hadoop.conf.Configuration;
import org.apache.spark.BarrierTaskContext;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.sql.SparkSession;
import org.kindling.data.DatasetReader;
import org.kindling.models.Checkpoints;
import org.kindling.models.Gpt;
import org.kindling.models.RunConfig;
import org.kindling.models.StepResult;
import org.kindling.models.TrainLoop;
import org.kindling.models.Trainer;
import org.kindling.ops.Device;
import org.kindling.ops.cpu.CpuDevice;
import scala.reflect.ClassTag$;
import scala.runtime.AbstractFunction1;

/**
 * {@code kindling train} on Spark: one barrier stage with one task per worker, followed by a
 * shuffle so that a failed stage is retried whole (STACK.md); each attempt resumes from the run's
 * LATEST checkpoint. The task picks the CPU with {@code spark.task.cpus} threads, reads its slice
 * of the dataset, trains with the single-process loop and checkpoints through the Hadoop
 * FileSystem. One worker: data-parallel gradient exchange between workers is not part of this job yet.
 */
public final class TrainJob {
    private TrainJob() {
    }

    /** What the driver hands the task: plain strings, nothing a host deserializes as code. */
    record Plan(String run, String data, String configYaml, int threads) implements Serializable {
    }

    /** The task's report: every step it ran. */
    record Outcome(List<StepResult> steps) implements Serializable {
    }

    /** Trains until max_steps (resuming a run that has checkpoints); returns the steps this call ran. */
    public static List<StepResult> run(SparkSession spark, String run, String data, RunConfig config) throws IOException {
        JavaSparkContext sc = JavaSparkContext.fromSparkContext(spark.sparkContext());
        Configuration conf = sc.hadoopConfiguration();
        HadoopRunStorage storage = new HadoopRunStorage(run, conf);
        HadoopRunStorage dataset = new HadoopRunStorage(data, conf);
        if (!dataset.exists("manifest.json")) {
            throw new IllegalArgumentException(data + " is not a complete dataset: it has no manifest.json");
        }
        if (!storage.exists(RunDir.TOKENIZER)) {
            try (InputStream in = dataset.open(RunDir.TOKENIZER); OutputStream out = storage.create(RunDir.TOKENIZER)) {
                in.transferTo(out);
            }
        }
        String yaml = config.toYaml();
        try (OutputStream out = storage.create("config.yaml")) {
            out.write(yaml.getBytes(StandardCharsets.UTF_8));
        }
        int threads = Integer.parseInt(spark.conf().get("spark.task.cpus", "1"));
        if (spark.sparkContext().master().startsWith("local")) {
            threads = Math.max(threads, sc.defaultParallelism()); // local mode: the one worker may use every core
        }
        Plan plan = new Plan(storage.root(), dataset.root(), yaml, threads);
        List<Outcome> outcomes = sc.parallelize(List.of(0), 1).rdd().barrier()
                .mapPartitions(new Task(plan), false, ClassTag$.MODULE$.apply(Outcome.class))
                .toJavaRDD().repartition(1).collect();
        List<StepResult> steps = outcomes.get(0).steps();
        writeMetrics(storage, steps);
        return steps;
    }

    /** metrics.jsonl: the lines of earlier runs up to where this one resumed, then this run's steps. */
    private static void writeMetrics(HadoopRunStorage storage, List<StepResult> steps) throws IOException {
        int first = steps.isEmpty() ? Integer.MAX_VALUE : steps.get(0).step();
        StringBuilder sb = new StringBuilder();
        if (storage.exists("metrics.jsonl")) {
            try (InputStream in = storage.open("metrics.jsonl")) {
                for (String line : new String(in.readAllBytes(), StandardCharsets.UTF_8).split("\n")) {
                    java.util.regex.Matcher m = java.util.regex.Pattern.compile("^\\{\"step\":(\\d+),").matcher(line);
                    if (m.find() && Integer.parseInt(m.group(1)) < first) {
                        sb.append(line).append('\n');
                    }
                }
            }
        }
        for (StepResult r : steps) {
            sb.append(metricsLine(r)).append('\n');
        }
        try (OutputStream out = storage.create("metrics.jsonl.tmp")) {
            out.write(sb.toString().getBytes(StandardCharsets.UTF_8));
        }
        storage.replace("metrics.jsonl.tmp", "metrics.jsonl");
    }

    /** The barrier task: train rank 0 of 1. */
    static final class Task extends AbstractFunction1<scala.collection.Iterator<Integer>, scala.collection.Iterator<Outcome>>
            implements Serializable {
        private final Plan plan;

        Task(Plan plan) {
            this.plan = plan;
        }

        @Override
        public scala.collection.Iterator<Outcome> apply(scala.collection.Iterator<Integer> ignored) {
            BarrierTaskContext ctx = BarrierTaskContext.get();
            RunConfig cfg = RunConfig.parse(plan.configYaml(), plan.run() + "/config.yaml");
            Configuration conf = new Configuration();
            List<StepResult> results = new ArrayList<>();
            try (CpuDevice dev = Device.cpu(plan.threads()); Gpt model = new Gpt(cfg.model(), dev, cfg.train().seed());
                 Trainer trainer = new Trainer(model, cfg.train());
                 DatasetSource source = new DatasetSource(new DatasetReader(plan.data(), conf, cfg.train().seed(),
                         ctx.partitionId(), ctx.numPartitions(), cfg.train().batchTokens()))) {
                TrainLoop.run(trainer, source, new Checkpoints(new HadoopRunStorage(plan.run(), conf)), cfg, results::add);
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
            return scala.jdk.javaapi.CollectionConverters.asScala(List.of(new Outcome(results)).iterator());
        }
    }

    static String metricsLine(StepResult r) {
        return String.format(java.util.Locale.ROOT, "{\"step\":%d,\"loss\":%.6f,\"lr\":%.6e,\"grad_norm\":%.6f,\"tokens_per_s\":%.1f}",
                r.step(), r.loss(), r.lr(), r.gradNorm(), r.tokensPerSecond());
    }
}
