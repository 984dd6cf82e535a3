package org.kindling.api;

import java.io.IOException;
import java.io.InputStream;
import java.io.PrintStream;
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.function.Consumer;
import org.apache.hadoop.conf.Configuration;
import org.apache.spark.sql.SparkSession;
import org.kindling.data.BpeTokenizer;
import org.kindling.models.Gpt;
import org.kindling.models.config.RunConfig;
import org.kindling.models.pipeline.PipelineExecutor;
import org.kindling.models.pipeline.PipelinePolicy;
import org.kindling.models.train.StepResult;
import org.kindling.train.HadoopRunStorage;
import org.kindling.train.RunDir;
import org.kindling.train.TaskDevice;
import org.kindling.train.TrainJob;
import org.kindling.train.TrainingFailedException;
import org.kindling.train.TrainingInterruptedException;

/**
 * Trains a model on a prepared dataset in a Spark barrier stage, checkpointing to the run directory
 * and resuming from its LATEST checkpoint: what {@code kindling train} does. Progress lines go to
 * {@link #progress} (default: {@code System.err} as it is when {@link #run()} starts, which a
 * notebook kernel redirects into the cell's output).
 *
 * <p>The session stays usable whatever happens: a failure throws {@link TrainingFailedException}
 * (or {@link InvalidOptionException} for bad options) with the run's job group cleared; an interrupt
 * of the calling thread (a notebook's interrupt button) cancels the run's Spark jobs, waits for their
 * tasks to stop and throws {@link TrainingInterruptedException}.
 */
public final class TrainBuilder {
    private final SparkSession spark;
    private String config;
    private String data;
    private String evalData;
    private String runDir;
    private int workers = 1;
    private int pipelineStages = 1;
    private String pipelinePolicy;
    private String pipelineOrder;
    private String device = "cpu";
    private boolean cpuFallback;
    private TaskDevice taskDevice;
    private final Map<String, String> sets = new LinkedHashMap<>();
    private Consumer<String> progress;

    TrainBuilder(SparkSession spark) {
        this.spark = spark;
    }

    /** The model config: a preset name ({@code conf/models/NAME.yaml}, e.g. {@code tiny}) or a YAML file (required). */
    public TrainBuilder preset(String nameOrFile) {
        this.config = nameOrFile;
        return this;
    }

    /** The prepared dataset to train on (required). */
    public TrainBuilder data(PreparedData data) {
        this.data = data.path();
        return this;
    }

    /** The prepared dataset's directory (any Hadoop path). */
    public TrainBuilder data(String path) {
        this.data = path;
        return this;
    }

    /**
     * Data to evaluate on during training (default: none, and no evaluation): after every
     * {@code eval_interval} steps (default: the log interval; 0 = off) and the last, each worker
     * computes the loss over the first {@code eval_batches} batches (default 4) of its slice, and
     * the step's {@code eval_loss} metric is the mean over all workers' tokens. It must use the run's tokenizer.
     */
    public TrainBuilder evalData(PreparedData data) {
        this.evalData = data.path();
        return this;
    }

    /** The eval dataset's directory (any Hadoop path). */
    public TrainBuilder evalData(String path) {
        this.evalData = path;
        return this;
    }

    /** The run directory (required; any Hadoop path). A run with checkpoints resumes from LATEST. */
    public TrainBuilder runDir(String dir) {
        this.runDir = dir;
        return this;
    }

    /** Overrides a config key, e.g. {@code set("max_steps", 200)}, {@code set("lr", 1e-3)}; checked like the YAML. */
    public TrainBuilder set(String key, Object value) {
        sets.put(key, String.valueOf(value));
        return this;
    }

    /** Data-parallel workers: barrier tasks that sum gradients every step (default 1). */
    public TrainBuilder workers(int workers) {
        this.workers = workers;
        return this;
    }

    /**
     * Pipeline stages S (default 1: none): the model is cut into S stages of about equal FLOPs, each
     * worker holds one, and the workers form {@code workers / S} replicas of the pipeline that sum
     * their gradients stage by stage.
     */
    public TrainBuilder pipelineStages(int stages) {
        this.pipelineStages = stages;
        return this;
    }

    /** The pipeline schedule with {@link #pipelineStages} of 2 or more: 1f1b (default), 1f1b-recompute, stage-aware or shifted. */
    public TrainBuilder pipelinePolicy(String policy) {
        this.pipelinePolicy = policy;
        return this;
    }

    /**
     * The pipeline's order with {@link #pipelineStages} of 2 or more: static (default: the schedule's
     * program) or message-driven (AxoNN: each stage runs whichever activation or gradient arrived first).
     */
    public TrainBuilder pipelineOrder(String order) {
        this.pipelineOrder = order;
        return this;
    }

    /** What each task computes on: {@code cpu}, {@code cpu:N}, {@code cuda}, … (default {@code cpu}). */
    public TrainBuilder device(String spec) {
        this.device = spec;
        return this;
    }

    /**
     * The tasks' device in full, e.g. {@code TaskDevice.local("cuda:0")} for one task on local Spark,
     * which schedules no GPUs (replaces {@link #device(String)} and {@link #cpuFallback}).
     */
    public TrainBuilder device(TaskDevice device) {
        this.taskDevice = device;
        return this;
    }

    /** With {@code device("cuda")}: a task Spark gave no GPU trains on the CPU, with a warning, instead of failing. */
    public TrainBuilder cpuFallback(boolean cpuFallback) {
        this.cpuFallback = cpuFallback;
        return this;
    }

    /** Where the model summary and progress lines go. */
    public TrainBuilder progress(PrintStream out) {
        this.progress = Lines.of(out);
        return this;
    }

    /** As {@link #progress(PrintStream)}, for a writer. */
    public TrainBuilder progress(PrintWriter out) {
        this.progress = Lines.of(out);
        return this;
    }

    /**
     * Checks the options that need no Spark (a command line does so before it starts Spark; whether
     * the GPUs are there is each executor's to say); {@link #run()} checks the rest against the dataset.
     */
    public TrainBuilder check() {
        taskDevice();
        return this;
    }

    private TaskDevice taskDevice() {
        require("preset", config);
        require("data", data);
        require("runDir", runDir);
        if (evalData != null && evalData.isBlank()) {
            throw new InvalidOptionException("evalData", "must name a prepared dataset, got a blank path");
        }
        if (workers < 1) {
            throw new InvalidOptionException("workers", "--workers must be at least 1, got " + workers);
        }
        pipeline();
        try {
            TaskDevice chosen = taskDevice != null ? taskDevice : new TaskDevice(device, cpuFallback);
            chosen.check();
            return chosen;
        } catch (IllegalArgumentException e) {
            throw InvalidOptionException.of(e, "device");
        }
    }

    /** Checks the options, trains until max_steps and returns the run as it then is. */
    public TrainedRun run() throws IOException {
        TaskDevice taskDevice = taskDevice();
        if (spark == null) {
            throw new InvalidOptionException("spark", "a SparkSession is required to run");
        }
        Consumer<String> out = Lines.orStderr(progress);
        // The session's Hadoop configuration carries the spark.hadoop.* settings (credentials, mount tables).
        Configuration conf = spark.sparkContext().hadoopConfiguration();
        HadoopRunStorage dataset = new HadoopRunStorage(data, conf);
        if (!dataset.exists(RunDir.TOKENIZER)) {
            throw new InvalidOptionException("data", "--data " + data + " has no " + RunDir.TOKENIZER + ": is it a prepared dataset?");
        }
        BpeTokenizer tok;
        try (InputStream in = dataset.open(RunDir.TOKENIZER)) {
            tok = BpeTokenizer.fromJson(new String(in.readAllBytes(), StandardCharsets.UTF_8), dataset.describe(RunDir.TOKENIZER));
        }
        Map<String, String> overrides = new LinkedHashMap<>(sets);
        overrides.putIfAbsent("vocab", String.valueOf(tok.vocabSize()));
        RunConfig cfg;
        try {
            cfg = RunConfig.load(Presets.resolve(config), overrides);
        } catch (IllegalArgumentException e) {
            throw InvalidOptionException.of(e, sets.isEmpty() ? "preset" : "set");
        }
        if (cfg.model().vocab() < tok.vocabSize()) {
            throw new InvalidOptionException("set", "vocab " + cfg.model().vocab() + " is smaller than the dataset's tokenizer ("
                    + tok.vocabSize() + ")");
        }
        Gpt.ParameterCounts counts = Gpt.parameterCounts(cfg.model());
        out.accept(String.format("model: %,d parameters, %,d active per token", counts.total(), counts.active()));
        List<StepResult> steps;
        try {
            steps = TrainJob.run(spark, runDir, data, evalData, cfg, workers, pipeline(), taskDevice, out);
        } catch (InvalidOptionException e) {
            throw e;
        } catch (IllegalArgumentException e) {
            throw InvalidOptionException.of(e, "runDir");
        }
        return TrainedRun.open(runDir, conf, steps);
    }

    private TrainJob.Pipeline pipeline() {
        if (pipelineStages < 1) {
            throw new InvalidOptionException("pipelineStages", "--pipeline-stages must be at least 1, got " + pipelineStages);
        }
        if (workers % pipelineStages != 0) {
            throw new InvalidOptionException("pipelineStages", "--workers " + workers + " is not a multiple of --pipeline-stages "
                    + pipelineStages + ": every replica of the model needs one worker per stage");
        }
        if (pipelinePolicy != null && pipelineStages == 1) {
            throw new InvalidOptionException("pipelinePolicy", "--pipeline-policy " + pipelinePolicy + " needs --pipeline-stages "
                    + "of 2 or more: a single stage runs no pipeline schedule");
        }
        if (pipelineOrder != null && pipelineStages == 1) {
            throw new InvalidOptionException("pipelineOrder", "--pipeline-order " + pipelineOrder + " needs --pipeline-stages "
                    + "of 2 or more: a single stage runs no pipeline schedule");
        }
        PipelinePolicy policy;
        try {
            policy = pipelinePolicy == null ? PipelinePolicy.ONE_F_ONE_B : PipelinePolicy.parse(pipelinePolicy);
        } catch (IllegalArgumentException e) {
            throw InvalidOptionException.of(new IllegalArgumentException("--pipeline-policy: " + e.getMessage(), e), "pipelinePolicy");
        }
        try {
            return new TrainJob.Pipeline(pipelineStages, policy, pipelineOrder == null ? PipelineExecutor.Order.STATIC
                    : PipelineExecutor.Order.parse(pipelineOrder));
        } catch (IllegalArgumentException e) {
            throw InvalidOptionException.of(new IllegalArgumentException("--pipeline-order: " + e.getMessage(), e), "pipelineOrder");
        }
    }

    private static void require(String option, String value) {
        if (value == null || value.isBlank()) {
            throw new InvalidOptionException(option, "is required");
        }
    }
}
