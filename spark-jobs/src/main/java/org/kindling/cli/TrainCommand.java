package org.kindling.cli;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import org.apache.hadoop.conf.Configuration;
import org.apache.spark.sql.SparkSession;
import org.kindling.data.BpeTokenizer;
import org.kindling.models.Gpt;
import org.kindling.models.config.RunConfig;
import org.kindling.models.train.StepResult;
import org.kindling.train.HadoopRunStorage;
import org.kindling.train.RunDir;
import org.kindling.train.TaskDevice;
import org.kindling.train.TrainJob;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

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

    @Option(names = "--run", required = true, description = "the run directory")
    String run;

    @Option(names = "--workers", defaultValue = "1",
            description = "data-parallel workers: barrier tasks that sum gradients in a ring every step (default ${DEFAULT-VALUE})")
    int workers;

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
        if (workers < 1) {
            throw new CommandLine.ParameterException(cmd, "--workers must be at least 1, got " + workers);
        }
        // Checked here, before Spark starts; whether the GPUs are there is each executor's to say.
        TaskDevice taskDevice = new TaskDevice(device.spec, cpuFallback);
        try {
            taskDevice.check();
        } catch (IllegalArgumentException e) {
            throw new CommandLine.ParameterException(cmd, e.getMessage());
        }
        SparkSession spark = Spark.session("kindling train", master, sparkConf);
        try {
            // The session's Hadoop configuration carries the spark.hadoop.* settings (credentials, mount tables).
            Configuration conf = spark.sparkContext().hadoopConfiguration();
            BpeTokenizer tok;
            HadoopRunStorage dataset = new HadoopRunStorage(data, conf);
            if (!dataset.exists(RunDir.TOKENIZER)) {
                throw new CommandLine.ParameterException(cmd, "--data " + data + " has no " + RunDir.TOKENIZER
                        + ": is it a prepared dataset?");
            }
            try (InputStream in = dataset.open(RunDir.TOKENIZER)) {
                tok = BpeTokenizer.fromJson(new String(in.readAllBytes(), StandardCharsets.UTF_8), dataset.describe(RunDir.TOKENIZER));
            }
            Map<String, String> sets = new LinkedHashMap<>(overrides);
            sets.putIfAbsent("vocab", String.valueOf(tok.vocabSize()));
            RunConfig cfg;
            try {
                Path file = Presets.resolve(config);
                cfg = RunConfig.load(file, sets);
            } catch (IllegalArgumentException e) {
                throw new CommandLine.ParameterException(cmd, e.getMessage());
            }
            if (cfg.model().vocab() < tok.vocabSize()) {
                throw new CommandLine.ParameterException(cmd, "vocab " + cfg.model().vocab() + " is smaller than the dataset's "
                        + "tokenizer (" + tok.vocabSize() + ")");
            }
            Gpt.ParameterCounts counts = Gpt.parameterCounts(cfg.model());
            cmd.getErr().printf("model: %,d parameters, %,d active per token%n", counts.total(), counts.active());
            long t0 = System.nanoTime();
            List<StepResult> steps;
            try {
                steps = TrainJob.run(spark, run, data, cfg, workers, taskDevice);
            } catch (IllegalArgumentException e) {
                throw new CommandLine.ParameterException(cmd, e.getMessage());
            }
            double s = (System.nanoTime() - t0) / 1e9;
            var err = cmd.getErr();
            if (steps.isEmpty()) {
                err.printf("%s is already at max_steps %d%n", run, cfg.train().maxSteps());
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
}
