package org.kindling.cli;

import java.io.IOException;
import java.io.PrintWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.Callable;
import org.apache.arrow.memory.RootAllocator;
import org.apache.hadoop.conf.Configuration;
import org.apache.spark.sql.SparkSession;
import org.kindling.api.Presets;
import org.kindling.data.BpeTokenizer;
import org.kindling.data.BpeTrainer;
import org.kindling.data.DatasetReader;
import org.kindling.data.Shard;
import org.kindling.data.ShardWriter;
import org.kindling.models.Gpt;
import org.kindling.models.GptStage;
import org.kindling.models.config.RunConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.pipeline.PipelinePolicy;
import org.kindling.models.train.DataParallel;
import org.kindling.models.train.InProcessPipeline;
import org.kindling.models.train.StageTrainer;
import org.kindling.models.train.StepResult;
import org.kindling.models.train.Trainer;
import org.kindling.ops.Device;
import org.kindling.ops.cpu.CpuDevice;
import org.kindling.train.DatasetSource;
import org.kindling.train.TrainJob;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

@Command(name = "spark", mixinStandardHelpOptions = true,
        description = {"What Spark and the ring cost: kindling train on --workers barrier tasks of local[workers] beside",
            "in-process data parallelism with as many single-thread replicas in this JVM, each reading the batches that task",
            "of the same rank reads, on a synthetic dataset of random max_seq-token documents. tokens/s of the median step",
            "of each (Spark: the time between rank 0's step reports on the driver), then spark / in-process."})
final class SparkBench implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--config", description = "model preset name (conf/models/NAME.yaml) or a config file (default ${DEFAULT-VALUE})",
            defaultValue = "small")
    String config;

    @Option(names = "--set", description = "override a key of the config as `kindling train --set` does")
    Map<String, String> overrides = new LinkedHashMap<>();

    @Option(names = "--workers", description = "Spark tasks, and replicas in process (default ${DEFAULT-VALUE})", defaultValue = "2")
    int workers;

    @Option(names = "--pipeline-stages", description = {"pipeline stages S: the model cut into S stages, one per worker",
        "(--workers must equal S: the in-process side runs one replica of the pipeline, InProcessPipeline's stage threads)",
        "(default ${DEFAULT-VALUE}: data parallelism)"}, defaultValue = "1")
    int stages;

    @Option(names = "--steps", description = "timed steps, after --warmup untimed ones (default ${DEFAULT-VALUE})",
            defaultValue = "10")
    int steps;

    @Option(names = "--warmup", description = "untimed steps first (default ${DEFAULT-VALUE})", defaultValue = "3")
    int warmup;

    @Option(names = "--json", description = "print one JSON line per mode on stdout (human-readable output goes to stderr)")
    boolean json;

    @Override
    public Integer call() throws Exception {
        CommandLine cmd = spec.commandLine();
        BenchOptions.requirePositive(cmd, "--workers", workers, "--steps", steps, "--warmup", warmup, "--pipeline-stages", stages);
        if (stages > 1 && workers != stages) {
            throw new CommandLine.ParameterException(cmd, "--pipeline-stages " + stages + " needs --workers " + stages
                    + ": the in-process side runs one replica of the pipeline");
        }
        // The learning-rate warm-up must fit in the short run; it changes no speed.
        Map<String, String> keys = new LinkedHashMap<>(Map.of("warmup_steps", "0"));
        keys.putAll(overrides);
        keys.put("max_steps", String.valueOf(warmup + steps));
        keys.put("log_interval", "1");
        keys.put("checkpoint_interval", "0");
        RunConfig cfg;
        try {
            cfg = RunConfig.load(Presets.resolve(config), keys);
        } catch (IllegalArgumentException e) {
            throw new CommandLine.ParameterException(cmd, e.getMessage());
        }
        if (stages > 1) {
            try {
                GptStage.split(cfg.model(), stages);
                String refusal = StageTrainer.refusal(cfg.train());
                if (refusal != null) {
                    throw new IllegalArgumentException(refusal);
                }
            } catch (IllegalArgumentException e) {
                throw new CommandLine.ParameterException(cmd, "--pipeline-stages " + stages + ": " + e.getMessage());
            }
        }
        int replicas = workers / stages;
        PrintWriter err = cmd.getErr();
        Path dir = Files.createTempDirectory("kindling-bench-spark");
        try {
            Path data = dir.resolve("data");
            // Enough documents that no task wraps into a second epoch during the run.
            int perBatch = Math.max(1, cfg.train().batchTokens() / cfg.model().maxSeq());
            int accum = cfg.train().gradAccum();
            writeDataset(data, cfg, (warmup + steps + 1) * replicas * accum * perBatch);
            Timing.Stats inProcess = stages > 1 ? inProcessPipeline(cfg, data) : inProcess(cfg, data);
            long tokensPerStep = (long) replicas * accum * perBatch * cfg.model().maxSeq();
            double local = inProcess.medianRate(tokensPerStep);
            err.printf("in-process: %d %s x 1 thread: %.0f tokens/s (median of %d steps)%n", workers,
                    stages > 1 ? "pipeline stage(s)" : "replica(s)", local, inProcess.reps());
            err.flush();
            Timing.Stats onSpark = onSpark(cmd, cfg, data, dir.resolve("run"));
            double spark = onSpark.medianRate(tokensPerStep);
            err.printf("spark: kindling train, %d task(s) on local[%d]: %.0f tokens/s (median of %d steps)%n", workers, workers, spark,
                    onSpark.reps());
            err.printf("spark / in-process = %.2fx tokens/s (same model, batches and cores, this run)%n", spark / local);
            err.flush();
            if (json) {
                for (String mode : List.of("in-process", "spark")) {
                    Map<String, Object> row = new LinkedHashMap<>();
                    row.put("bench", "spark");
                    row.put("mode", mode);
                    row.put("workers", workers);
                    row.put("pipeline_stages", stages);
                    row.put("tokens_per_s", BenchOptions.round(mode.equals("spark") ? spark : local));
                    Json.printLine(cmd.getOut(), row);
                }
            }
        } finally {
            LocalFiles.deleteTreeAfter(dir, cmd.getErr());
        }
        return 0;
    }

    /** Replica r of {@code workers} in this JVM on cpu:1 reads what Spark task r reads; a timed run is one step. */
    private Timing.Stats inProcess(RunConfig cfg, Path data) throws Exception {
        Configuration conf = new Configuration();
        List<DatasetSource> sources = new ArrayList<>();
        try (DataParallel dp = new DataParallel(workers, (rank, sync) -> {
            CpuDevice dev = CpuDevice.open(1);
            Gpt model = new Gpt(cfg.model(), dev, cfg.train().seed());
            return new DataParallel.Replica(dev, model, new Trainer(model, cfg.train(), sync));
        })) {
            for (int r = 0; r < workers; r++) {
                sources.add(new DatasetSource(new DatasetReader(data.toString(), conf, cfg.train().seed(), r, workers,
                        cfg.train().batchTokens())));
            }
            List<DataSource> feeds = List.copyOf(sources);
            return Timing.measure(new Timing.Rule(warmup, steps, 0), () -> dp.step(feeds));
        } finally {
            sources.forEach(DatasetSource::close);
        }
    }

    /** The model cut into the workers' stages in this JVM, each on cpu:1, reading what the Spark run's one replica reads. */
    private Timing.Stats inProcessPipeline(RunConfig cfg, Path data) throws Exception {
        List<Device> devices = new ArrayList<>();
        try (DatasetSource feed = new DatasetSource(new DatasetReader(data.toString(), new Configuration(), cfg.train().seed(), 0, 1,
                cfg.train().batchTokens()))) {
            for (int s = 0; s < stages; s++) {
                devices.add(CpuDevice.open(1));
            }
            try (InProcessPipeline pipe = new InProcessPipeline(cfg.model(), cfg.train(), PipelinePolicy.ONE_F_ONE_B, devices,
                    Duration.ofSeconds(300))) {
                return Timing.measure(new Timing.Rule(warmup, steps, 0), () -> {
                    List<TokenBatch> batches = new ArrayList<>();
                    for (int mb = 0; mb < cfg.train().gradAccum(); mb++) {
                        batches.add(feed.next());
                    }
                    pipe.step(batches);
                });
            }
        } finally {
            devices.forEach(Device::close);
        }
    }

    /**
     * kindling train on local[workers]: a timed run is the time between two of rank 0's step
     * reports as the driver receives them (reading, stepping, ring, reporting), for the steps after
     * the warm-up.
     */
    private Timing.Stats onSpark(CommandLine cmd, RunConfig cfg, Path data, Path run) throws IOException {
        List<Long> arrivals = new ArrayList<>();
        SparkSession spark = Spark.session("kindling bench spark", "local[" + workers + "]");
        List<StepResult> results;
        try {
            results = TrainJob.run(spark, run.toString(), data.toString(), null, cfg, workers,
                    new TrainJob.Pipeline(stages, PipelinePolicy.ONE_F_ONE_B), org.kindling.train.TaskDevice.CPU, line -> {
                        if (line.startsWith("step ")) {
                            arrivals.add(System.nanoTime());
                        }
                    });
        } finally {
            spark.stop();
        }
        if (results.size() != warmup + steps || arrivals.size() != warmup + steps) {
            throw new IllegalStateException("kindling train reported " + arrivals.size() + " of " + (warmup + steps) + " steps");
        }
        double[] seconds = new double[steps];
        for (int i = 0; i < steps; i++) {
            seconds[i] = (arrivals.get(warmup + i) - arrivals.get(warmup + i - 1)) / 1e9;
        }
        return Timing.Stats.of(seconds);
    }

    /** Random documents of max_seq tokens below the model's vocabulary, in one shard with a tokenizer.json. */
    private static void writeDataset(Path out, RunConfig cfg, int docs) throws IOException {
        Files.createDirectories(out);
        int len = cfg.model().maxSeq();
        int vocab = cfg.model().vocab();
        BpeTokenizer tokenizer = BpeTrainer.train(Map.of(), 257, List.of(BpeTokenizer.END_OF_TEXT));
        Shard.Info info = new Shard.Info(tokenizer.sha256(), vocab, "{\"<|endoftext|>\":" + (vocab - 1) + "}", 1, len);
        SplittableRandom r = new SplittableRandom(1);
        try (RootAllocator allocator = new RootAllocator();
             ShardWriter w = new ShardWriter(Files.newOutputStream(out.resolve("shard-0.arrow")), info, allocator, 64)) {
            int[] doc = new int[len];
            for (int d = 0; d < docs; d++) {
                for (int i = 0; i < len; i++) {
                    doc[i] = r.nextInt(vocab);
                }
                w.write(d, doc, 0, len);
            }
        }
        Files.writeString(out.resolve("manifest.json"), "{\"format_version\":1,\"shards\":[{\"path\":\"shard-0.arrow\"}]}");
        Files.writeString(out.resolve("tokenizer.json"), tokenizer.toJson());
    }

}
