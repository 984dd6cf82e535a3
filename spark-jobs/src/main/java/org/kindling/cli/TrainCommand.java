package org.kindling.cli;

import java.io.IOException;
import java.io.PrintWriter;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import org.apache.spark.sql.SparkSession;
import org.kindling.api.KindlingApi;
import org.kindling.api.TrainBuilder;
import org.kindling.api.TrainedRun;
import org.kindling.models.train.StepResult;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import picocli.CommandLine;

@Command(name = "train", mixinStandardHelpOptions = true,
        description = {"Train a model on a prepared dataset in a Spark barrier stage, checkpointing to the run directory",
            "(any Hadoop path) and resuming from its LATEST checkpoint. The model's vocabulary follows the dataset's tokenizer."})
final class TrainCommand implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--config", required = true, description = "model config: a YAML file or a preset name (conf/models/NAME.yaml)")
    String config;

    @Option(names = "--data", required = true, description = "a prepared dataset")
    String data;

    @Option(names = "--eval-data", description = {"a prepared dataset with the run's tokenizer to evaluate on during training:",
        "eval_loss after every eval_interval steps (default: log_interval; 0 = off) and the last, over each worker's first",
        "eval_batches batches (default 4) of its slice"})
    String evalData;

    @Option(names = "--run", required = true, description = "the run directory")
    String run;

    @Option(names = "--workers", defaultValue = "1",
            description = "data-parallel workers: barrier tasks that sum gradients in a ring every step (default ${DEFAULT-VALUE})")
    int workers;

    @Option(names = "--zero", description = {"ZeRO stage: 1 shards AdamW's moments across the workers (each updates its shard,",
        "then they all-gather the weights; bit-identical to 0, plain data parallelism); the config key train.zero"})
    Integer zero;

    @Option(names = "--pipeline-stages", defaultValue = "1", description = {"pipeline stages S: the model is cut into S stages of",
        "about equal FLOPs, one per worker, and the --workers form workers/S replicas of the pipeline (default ${DEFAULT-VALUE})"})
    int pipelineStages;

    @Option(names = "--pipeline-policy", description = {"the pipeline schedule with --pipeline-stages: 1f1b (default),",
        "1f1b-recompute, stage-aware or shifted"})
    String pipelinePolicy;

    @Option(names = "--pipeline-order", description = {"with --pipeline-stages: static (default; the schedule's program) or",
        "message-driven (AxoNN: each stage runs whichever activation or gradient arrived first, within 1F1B's in-flight bound)"})
    String pipelineOrder;

    @CommandLine.Mixin
    DeviceOption device;

    @Option(names = "--cpu-fallback", description = {"with --device cuda: a task that Spark gave no GPU trains on the CPU, with a",
        "warning, instead of failing"})
    boolean cpuFallback;

    @Option(names = "--master", description = "Spark master (default: the spark-submit one, else local[*])")
    String master;

    @Option(names = "--set", description = "override a config key, e.g. --set max_steps=200 --set lr=1e-3")
    Map<String, String> overrides = new LinkedHashMap<>();

    @Option(names = "--conf", description = {"a Spark setting, as with spark-submit, e.g. --conf spark.kindling.timeout.collective=120",
        "(Kindling's: spark.kindling.timeout.rendezvous, spark.kindling.timeout.collective in seconds;",
        "spark.kindling.allreduce.bucketBytes)"})
    Map<String, String> sparkConf = new LinkedHashMap<>();

    @Override
    public Integer call() throws IOException {
        CommandLine cmd = spec.commandLine();
        try {
            builder(null).check();
        } catch (IllegalArgumentException e) {
            throw Kindling.usage(cmd, e);
        }
        SparkSession spark = Spark.session("kindling train", master, sparkConf);
        try {
            long t0 = System.nanoTime();
            TrainedRun r;
            try {
                r = builder(spark).run();
            } catch (IllegalArgumentException e) {
                throw Kindling.usage(cmd, e);
            }
            double s = (System.nanoTime() - t0) / 1e9;
            PrintWriter err = cmd.getErr();
            List<StepResult> steps = r.trainedSteps();
            if (steps.isEmpty()) {
                err.printf("%s is already at max_steps (step %d)%n", run, r.finalStep());
            } else {
                StepResult last = steps.get(steps.size() - 1);
                err.printf("trained %s: step %d, loss %.4f%s, %.0f s (%d step(s) after step %d); checkpoints in %s/checkpoints, "
                        + "metrics in %s/metrics.jsonl%n", run, last.step(), last.loss(), last.metricsText(), s, steps.size(),
                        steps.get(0).step() - 1, run, run);
            }
            err.flush();
        } finally {
            spark.stop();
        }
        return 0;
    }

    private TrainBuilder builder(SparkSession spark) {
        TrainBuilder b = KindlingApi.train(spark).preset(config).data(data).runDir(run).workers(workers)
                .pipelineStages(pipelineStages).device(device.spec)
                .cpuFallback(cpuFallback).progress(spec.commandLine().getErr());
        if (evalData != null) {
            b.evalData(evalData);
        }
        if (pipelinePolicy != null) {
            b.pipelinePolicy(pipelinePolicy);
        }
        if (pipelineOrder != null) {
            b.pipelineOrder(pipelineOrder);
        }
        overrides.forEach(b::set);
        if (zero != null) {
            if (overrides.containsKey("zero") || overrides.containsKey("train.zero")) {
                throw new IllegalArgumentException("--zero and --set zero both set train.zero: give one");
            }
            b.set("zero", String.valueOf(zero));
        }
        return b;
    }
}
