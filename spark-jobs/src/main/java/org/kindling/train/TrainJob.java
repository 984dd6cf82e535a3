package org.kindling.train;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.Serializable;
import java.io.UncheckedIOException;
import java.net.InetAddress;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Optional;
import java.util.Set;
import java.util.TreeSet;
import java.util.UUID;
import java.util.function.Consumer;
import java.util.stream.IntStream;
import org.apache.hadoop.conf.Configuration;
import org.apache.spark.BarrierTaskContext;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.broadcast.Broadcast;
import org.apache.spark.scheduler.SparkListenerStageCompleted;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.util.SerializableConfiguration;
import org.kindling.collective.Coordinator;
import org.kindling.collective.Ring;
import org.kindling.collective.RingSync;
import org.kindling.collective.RunSecret;
import org.kindling.collective.StageLink;
import org.kindling.collective.StageLinkChannel;
import org.kindling.data.DatasetReader;
import org.kindling.models.Gpt;
import org.kindling.models.GptStage;
import org.kindling.models.nn.Precision;
import org.kindling.models.pipeline.PipelineExecutor;
import org.kindling.models.pipeline.PipelinePolicy;
import org.kindling.models.train.StageTrainer;
import org.kindling.models.config.RunConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.io.Checkpoints;
import org.kindling.models.train.DataParallel;
import org.kindling.models.train.GradientSync;
import org.kindling.models.train.NonFiniteException;
import org.kindling.models.train.StepResult;
import org.kindling.models.train.ReplicaCountException;
import org.kindling.models.train.TrainLoop;
import org.kindling.models.train.Trainer;
import org.kindling.ops.Device;
import scala.reflect.ClassTag$;
import scala.runtime.AbstractFunction1;

/**
 * {@code kindling train} on Spark: data-parallel training in one barrier stage with one task per
 * worker, followed by a shuffle so that a failed stage is retried whole (STACK.md). The driver
 * runs a {@link Coordinator}: the tasks meet there (authenticated with a per-run secret), learn
 * each other's ring addresses and the checkpoint to resume from, and rank 0 streams its step
 * results back for progress lines and {@code metrics.jsonl}. The tasks sum gradients among
 * themselves in a {@link Ring}; each trains on its {@link TaskDevice} (the CPU with its share of the
 * cores, or the GPU Spark assigned it), reads its slice of the dataset by (rank, world size), and
 * rank 0 checkpoints through the Hadoop FileSystem.
 */
public final class TrainJob {
    private static final System.Logger LOG = System.getLogger(TrainJob.class.getName());
    /** Spark conf key: seconds the driver waits for every worker to reach the rendezvous. */
    public static final String RENDEZVOUS_TIMEOUT = "spark.kindling.timeout.rendezvous";
    /** Spark conf key: seconds a worker waits on a silent peer inside a collective before failing. */
    public static final String COLLECTIVE_TIMEOUT = "spark.kindling.timeout.collective";
    /** Spark conf key: gradient bucket size in bytes. */
    public static final String BUCKET_BYTES = "spark.kindling.allreduce.bucketBytes";
    /**
     * Spark conf key: single-thread model replicas per task on the CPU, summing gradients in shared
     * memory before the ring (default: one per CPU thread of the task; 1 trains one model on all of them).
     */
    public static final String REPLICAS_PER_TASK = "spark.kindling.replicasPerTask";
    /** Spark conf key: seconds an interrupted run waits for its cancelled tasks to stop. */
    public static final String CANCEL_TIMEOUT = "spark.kindling.timeout.cancel";

    private TrainJob() {
    }

    /**
     * A test-only failure: rank {@code rank} fails after step {@code step} (step 0: before it
     * reaches the coordinator), or with {@code stall} stops answering there, in the first stage
     * attempt only or in every attempt; or, with {@code lateMs}, it only reaches the coordinator
     * that much later than its peers (which keeps their ring ports open for a while).
     */
    record Fault(int rank, int step, boolean everyAttempt, boolean stall, long lateMs) implements Serializable {
        static final Fault NONE = new Fault(-1, -1, false, false, 0);

        Fault(int rank, int step, boolean everyAttempt) {
            this(rank, step, everyAttempt, false, 0);
        }

        Fault(int rank, int step, boolean everyAttempt, boolean stall) {
            this(rank, step, everyAttempt, stall, 0);
        }

        static Fault late(int rank, long ms) {
            return new Fault(rank, -1, true, false, ms);
        }
    }

    /**
     * What a task reports: a hash of its final weights, or why training stopped at a NaN/∞, which
     * every rank sees alike (the values are all-reduced) and which a retry would only repeat.
     */
    record Outcome(int stage, long checksum, String nonFinite) implements Serializable {
    }

    /**
     * How the workers split the model: {@code stages} pipeline stages (1: plain data parallelism,
     * every worker a whole model), each running {@code policy}'s schedule in {@code order}.
     */
    public record Pipeline(int stages, PipelinePolicy policy, PipelineExecutor.Order order) implements Serializable {
        /** Data parallelism only. */
        public static final Pipeline NONE = new Pipeline(1, PipelinePolicy.ONE_F_ONE_B, PipelineExecutor.Order.STATIC);

        public Pipeline {
            if (stages < 1) {
                throw new IllegalArgumentException("--pipeline-stages must be at least 1, got " + stages);
            }
            if (policy == null || order == null) {
                throw new IllegalArgumentException("--pipeline-policy and --pipeline-order are required with --pipeline-stages");
            }
        }

        /** {@code stages} stages running {@code policy}'s schedule in its static order. */
        public Pipeline(int stages, PipelinePolicy policy) {
            this(stages, policy, PipelineExecutor.Order.STATIC);
        }
    }

    /**
     * What the driver hands each task: plain values, nothing a host deserializes as code. The
     * secret's {@code toString} is redacted, so printing a plan does not print it. {@code evalData}
     * is null when the run does not evaluate.
     */
    record Plan(String run, String data, String evalData, String configYaml, int threads, int replicas, TaskDevice device, int world,
                Pipeline pipeline, String coordinatorHost, int coordinatorPort, RunSecret secret, long rendezvousTimeoutS,
                long collectiveTimeoutS, long bucketBytes, Fault fault)
            implements Serializable {
    }

    /** Trains until max_steps on {@code workers} tasks (resuming a run that has checkpoints); returns the steps this call ran. */
    public static List<StepResult> run(SparkSession spark, String run, String data, RunConfig config, int workers)
            throws IOException {
        return run(spark, run, data, config, workers, TaskDevice.CPU);
    }

    /** As {@link #run(SparkSession, String, String, RunConfig, int)}, each task on what {@code device} resolves to in it. */
    public static List<StepResult> run(SparkSession spark, String run, String data, RunConfig config, int workers, TaskDevice device)
            throws IOException {
        return run(spark, run, data, config, workers, device, Fault.NONE);
    }

    static List<StepResult> run(SparkSession spark, String run, String data, RunConfig config, int workers, Fault fault)
            throws IOException {
        return run(spark, run, data, config, workers, TaskDevice.CPU, fault);
    }

    /**
     * As {@link #run(SparkSession, String, String, RunConfig, int, TaskDevice)}, with the progress
     * lines handed to {@code progressLines} instead of the log. When the calling thread is
     * interrupted, the run's Spark job group is cancelled, the call waits (at most
     * {@value #CANCEL_TIMEOUT} seconds, default 60) until none of its tasks runs, clears the
     * interrupt and throws {@link TrainingInterruptedException}: the session stays usable.
     */
    public static List<StepResult> run(SparkSession spark, String run, String data, RunConfig config, int workers, TaskDevice device,
                                       Consumer<String> progressLines) throws IOException {
        return run(spark, run, data, null, config, workers, device, Fault.NONE, progressLines);
    }

    /**
     * As {@link #run(SparkSession, String, String, RunConfig, int, TaskDevice, Consumer)}, evaluating on
     * {@code evalData} (a prepared dataset with the run's tokenizer; null: none) after every
     * eval_interval-th step and the last: each worker's loss over the first eval_batches batches of its
     * slice, summed over the workers into the step's {@value StepResult#EVAL_LOSS} metric.
     */
    public static List<StepResult> run(SparkSession spark, String run, String data, String evalData, RunConfig config, int workers,
                                       TaskDevice device, Consumer<String> progressLines) throws IOException {
        return run(spark, run, data, evalData, config, workers, device, Fault.NONE, progressLines);
    }

    /**
     * As {@link #run(SparkSession, String, String, String, RunConfig, int, TaskDevice, Consumer)}, the
     * workers split into {@code pipeline.stages()} stages of {@code workers / stages} replicas each.
     */
    public static List<StepResult> run(SparkSession spark, String run, String data, String evalData, RunConfig config, int workers,
                                       Pipeline pipeline, TaskDevice device, Consumer<String> progressLines) throws IOException {
        return run(spark, run, data, evalData, config, workers, pipeline, device, Fault.NONE, progressLines);
    }

    static List<StepResult> run(SparkSession spark, String run, String data, RunConfig config, int workers, TaskDevice device,
                                Fault fault) throws IOException {
        return run(spark, run, data, null, config, workers, device, fault, line -> LOG.log(System.Logger.Level.INFO, line));
    }

    static List<StepResult> run(SparkSession spark, String run, String data, RunConfig config, int workers, TaskDevice device,
                                Fault fault, Consumer<String> progressLines) throws IOException {
        return run(spark, run, data, null, config, workers, device, fault, progressLines);
    }

    static List<StepResult> run(SparkSession spark, String run, String data, String evalData, RunConfig config, int workers,
                                Fault fault) throws IOException {
        return run(spark, run, data, evalData, config, workers, TaskDevice.CPU, fault, line -> LOG.log(System.Logger.Level.INFO, line));
    }

    static List<StepResult> run(SparkSession spark, String run, String data, String evalData, RunConfig config, int workers,
                                TaskDevice device, Fault fault, Consumer<String> progressLines) throws IOException {
        return run(spark, run, data, evalData, config, workers, Pipeline.NONE, device, fault, progressLines);
    }

    static List<StepResult> run(SparkSession spark, String run, String data, String evalData, RunConfig config, int workers,
                                Pipeline pipeline, TaskDevice device, Fault fault, Consumer<String> progressLines) throws IOException {
        JavaSparkContext sc = JavaSparkContext.fromSparkContext(spark.sparkContext());
        if (workers < 1) {
            throw new IllegalArgumentException("--workers must be at least 1, got " + workers);
        }
        checkPipeline(pipeline, config, workers);
        device.check();
        boolean local = spark.sparkContext().master().startsWith("local");
        int taskCpus = Integer.parseInt(spark.conf().get("spark.task.cpus", "1"));
        if (local && sc.defaultParallelism() < workers * taskCpus) {
            throw new IllegalArgumentException("--workers " + workers + " needs " + workers * taskCpus + " task slots but "
                    + spark.sparkContext().master() + " has " + sc.defaultParallelism() + "; use local[" + workers * taskCpus
                    + "] or fewer workers");
        }
        Configuration conf = sc.hadoopConfiguration();
        HadoopRunStorage storage = new HadoopRunStorage(run, conf);
        HadoopRunStorage dataset = new HadoopRunStorage(data, conf);
        if (!dataset.exists("manifest.json")) {
            throw new IllegalArgumentException(data + " is not a complete dataset: it has no manifest.json");
        }
        Checkpoints checkpoints = new Checkpoints(storage);
        // A LATEST naming no complete checkpoint fails every attempt alike: say so before any task starts.
        boolean resumes = checkpoints.latest().isPresent();
        if (resumes) {
            requireSameTokenizer(storage, dataset, data);
            requireSameModel(storage, config);
        } else {
            try (InputStream in = dataset.open(RunDir.TOKENIZER); OutputStream out = storage.create(RunDir.TOKENIZER)) {
                in.transferTo(out);
            }
        }
        String eval = evalData == null ? null : checkEvalData(evalData, new RunDir(run, conf), conf, config,
                workers / pipeline.stages());
        String yaml = config.toYaml();
        try (OutputStream out = storage.create("config.yaml")) {
            out.write(yaml.getBytes(StandardCharsets.UTF_8));
        }
        // Local mode: the workers share this machine's cores; on a cluster each task has spark.task.cpus.
        int threads = local ? Math.max(taskCpus, sc.defaultParallelism() / workers) : taskCpus;
        long replicas = positive(spark, REPLICAS_PER_TASK, threads);
        long rendezvousS = positive(spark, RENDEZVOUS_TIMEOUT, 300);
        long collectiveS = positive(spark, COLLECTIVE_TIMEOUT, 600);
        long bucketBytes = positive(spark, BUCKET_BYTES, RingSync.DEFAULT_BUCKET_BYTES);
        long cancelS = positive(spark, CANCEL_TIMEOUT, 60);
        RunSecret secret = RunSecret.generate();
        Progress progress = new Progress(storage, config.train(), progressLines);
        String host = spark.conf().get("spark.driver.host", InetAddress.getLocalHost().getHostAddress());
        String group = "kindling-train-" + UUID.randomUUID();
        try (Coordinator coordinator = new Coordinator(host, workers, secret, Duration.ofSeconds(rendezvousS), checkpoints::latest,
                progress)) {
            Plan plan = new Plan(storage.root(), dataset.root(), eval, yaml, threads, (int) Math.min(replicas, threads), device, workers,
                    pipeline, host, coordinator.port(), secret, rendezvousS, collectiveS, bucketBytes, fault);
            // Interrupt-on-cancel: when one task dies, Spark stops its peers at once instead of at their next barrier().
            sc.setJobGroup(group, "kindling train " + run, true);
            StageFailures failures = new StageFailures(group, coordinator);
            spark.sparkContext().addSparkListener(failures);
            CorruptInputs corrupt = new CorruptInputs(group, spark.sparkContext());
            spark.sparkContext().addSparkListener(corrupt);
            // Tasks rebuild the driver's Hadoop configuration: a fresh one would lack every spark.hadoop.* setting.
            Broadcast<SerializableConfiguration> hadoop = sc.broadcast(new SerializableConfiguration(conf));
            List<Outcome> outcomes;
            try {
                outcomes = sc.parallelize(IntStream.range(0, workers).boxed().toList(), workers).rdd().barrier()
                        .mapPartitions(new Task(plan, hadoop), false, ClassTag$.MODULE$.apply(Outcome.class))
                        .toJavaRDD().repartition(1).collect();
            } catch (Exception e) { // Spark's SparkException is checked but undeclared
                // Spark's job waiter lets an InterruptedException through and leaves the job running: stop it here.
                if (e instanceof InterruptedException || Thread.interrupted()) {
                    cancel(sc, group, Duration.ofSeconds(cancelS));
                    throw new TrainingInterruptedException("training of " + run + " was interrupted: its Spark jobs (group "
                            + group + ") are cancelled and their tasks stopped; the last checkpoint is "
                            + checkpoints.latest().orElse("none") + ", where the next run resumes", e);
                }
                if (corrupt.cause().isPresent()) {
                    throw new TrainingFailedException("training failed without retries: " + corrupt.cause().get(), e);
                }
                Optional<Coordinator.Failure> cause = coordinator.firstFailure(Duration.ofSeconds(5));
                if (cause.isEmpty()) {
                    throw e;
                }
                throw new TrainingFailedException("training failed (stage attempt " + cause.get().attempt() + "): rank "
                        + cause.get().rank() + ": " + cause.get().message(), e);
            } finally {
                sc.clearJobGroup();
                spark.sparkContext().removeSparkListener(failures);
                spark.sparkContext().removeSparkListener(corrupt);
                hadoop.destroy();
            }
            Optional<String> nonFinite = outcomes.stream().map(Outcome::nonFinite).filter(m -> m != null).findFirst();
            if (nonFinite.isPresent()) {
                throw new TrainingFailedException("training stopped at a non-finite value: " + nonFinite.get()
                        + "; the last checkpoint before it is " + checkpoints.latest().orElse("none"), null);
            }
            // Every replica of a stage (of the whole model, without stages) must end with the same weights.
            Map<Integer, Set<Long>> byStage = new HashMap<>();
            outcomes.forEach(o -> byStage.computeIfAbsent(o.stage(), k -> new TreeSet<>()).add(o.checksum()));
            if (byStage.values().stream().anyMatch(c -> c.size() != 1)) {
                throw new IllegalStateException("the workers' final weights differ (checksums by stage " + byStage
                        + "): the replicas diverged, which the ring's fixed reduction order should make impossible");
            }
        } finally {
            progress.flush();
        }
        return progress.thisRun();
    }

    /**
     * Cancels the jobs of {@code group} and waits until none of their tasks runs. The interrupt that
     * led here is cleared first (else this thread could not wait); one arriving while it waits is
     * kept for the caller.
     */
    private static void cancel(JavaSparkContext sc, String group, Duration deadline) {
        Thread.interrupted();
        sc.cancelJobGroup(group);
        long end = System.nanoTime() + deadline.toNanos();
        boolean again = false;
        while (running(sc, group)) {
            if (System.nanoTime() > end) {
                throw new TrainingFailedException("training was interrupted and its Spark jobs (group " + group + ") cancelled, but "
                        + "their tasks still ran after " + deadline.toSeconds() + " s (" + CANCEL_TIMEOUT + ")", null);
            }
            try {
                Thread.sleep(20);
            } catch (InterruptedException e) {
                again = true;
            }
        }
        if (again) {
            Thread.currentThread().interrupt();
        }
    }

    /** Whether a job of {@code group} runs or a task of one of its stages is still active. */
    private static boolean running(JavaSparkContext sc, String group) {
        var tracker = sc.statusTracker();
        for (int job : tracker.getJobIdsForGroup(group)) {
            var info = tracker.getJobInfo(job);
            if (info == null) {
                continue;
            }
            if (info.status() == org.apache.spark.JobExecutionStatus.RUNNING) {
                return true;
            }
            for (int stage : info.stageIds()) {
                var s = tracker.getStageInfo(stage);
                if (s != null && s.numActiveTasks() > 0) {
                    return true;
                }
            }
        }
        return false;
    }

    /** Tells the coordinator when a stage of this run's job fails, so that workers still waiting to meet stop. */
    private static final class StageFailures extends JobGroupListener {
        private final Coordinator coordinator;

        StageFailures(String group, Coordinator coordinator) {
            super(group);
            this.coordinator = coordinator;
        }

        @Override
        public void onStageCompleted(SparkListenerStageCompleted completed) {
            var info = completed.stageInfo();
            if (ours(info.stageId()) && info.failureReason().isDefined()) {
                coordinator.abandon(info.attemptNumber(), "Spark failed the stage: " + info.failureReason().get());
            }
        }
    }

    /**
     * Opens {@code evalData} as worker 0 of {@code workers} would, so that what would fail every task
     * fails here first, and checks that it carries the run's tokenizer (as {@code kindling eval} does);
     * returns its qualified path. Errors name {@code --eval-data}.
     */
    private static String checkEvalData(String evalData, RunDir run, Configuration conf, RunConfig config, int workers)
            throws IOException {
        String root = new HadoopRunStorage(evalData, conf).root();
        String runTokenizer = run.tokenizer().sha256();
        try (EvalPass pass = new EvalPass(root, conf, 0, workers, config.train().batchTokens(), config.train().evalBatches())) {
            pass.checkTokenizer(runTokenizer, "--eval-data " + evalData, run.describe(RunDir.TOKENIZER));
        } catch (IllegalArgumentException e) {
            if (e.getMessage() != null && e.getMessage().startsWith("--eval-data")) {
                throw e;
            }
            throw new IllegalArgumentException("--eval-data " + evalData + ": " + e.getMessage(), e);
        }
        return root;
    }

    /**
     * A run resumes from its checkpoints only into a model with the tensors they hold: any other would
     * fail every task attempt alike on the first shape that differs, so refuse it here naming the
     * config keys that changed. Keys that change no tensor (dropout, a router's loss weights) may
     * change on resume; they are logged.
     */
    private static void requireSameModel(HadoopRunStorage storage, RunConfig config) throws IOException {
        if (!storage.exists("config.yaml")) {
            return;
        }
        RunConfig earlier;
        try (InputStream in = storage.open("config.yaml")) {
            earlier = RunConfig.parse(new String(in.readAllBytes(), StandardCharsets.UTF_8), storage.describe("config.yaml"));
        }
        Map<String, Object> was = earlier.model().toMap();
        Map<String, Object> now = config.model().toMap();
        if (was.equals(now)) {
            return;
        }
        List<String> changed = new ArrayList<>();
        Set<String> keys = new TreeSet<>(was.keySet());
        keys.addAll(now.keySet());
        for (String k : keys) {
            if (!Objects.equals(was.get(k), now.get(k))) {
                changed.add(k + ": " + was.get(k) + " -> " + now.get(k));
            }
        }
        Map<String, List<Integer>> held = Gpt.parameterShapes(earlier.model());
        Map<String, List<Integer>> wanted = Gpt.parameterShapes(config.model());
        if (held.equals(wanted)) {
            LOG.log(System.Logger.Level.WARNING, "resuming " + storage.root() + " with model keys changed that change no tensor: "
                    + String.join("; ", changed));
            return;
        }
        String firstDifference = wanted.entrySet().stream()
                .filter(e -> !e.getValue().equals(held.get(e.getKey())))
                .map(e -> e.getKey() + " " + (held.containsKey(e.getKey()) ? held.get(e.getKey()) : "(absent)") + " -> " + e.getValue())
                .findFirst()
                .orElseGet(() -> held.keySet().stream().filter(k -> !wanted.containsKey(k)).findFirst().orElseThrow() + " is not in the new model");
        throw new IllegalArgumentException(storage.describe("config.yaml") + " holds checkpoints of another model ("
                + String.join("; ", changed) + ", so " + firstDifference
                + "); train into a new run directory to start over, or resume with the same model");
    }

    /** Checkpoints trained on one tokenizer's ids mean nothing under another's: resuming needs the dataset's tokenizer to be the run's. */
    private static void requireSameTokenizer(HadoopRunStorage storage, HadoopRunStorage dataset, String data) throws IOException {
        if (!storage.exists(RunDir.TOKENIZER)) {
            throw new IllegalArgumentException(storage.describe(RunDir.TOKENIZER) + " is missing, but the run has checkpoints");
        }
        byte[] ours;
        byte[] theirs;
        try (InputStream a = storage.open(RunDir.TOKENIZER); InputStream b = dataset.open(RunDir.TOKENIZER)) {
            ours = a.readAllBytes();
            theirs = b.readAllBytes();
        }
        if (!Arrays.equals(ours, theirs)) {
            throw new IllegalArgumentException(data + " was tokenized with another tokenizer than the run's "
                    + storage.describe(RunDir.TOKENIZER) + ", whose checkpoints it would resume; train into a new run directory");
        }
    }

    /**
     * The floats one stage-link frame may carry: a micro-batch's activations (at most batch_tokens
     * rows of d_model) or a piece of the tied weight's gradient; refused when a frame's bytes would
     * not fit one direct buffer.
     */
    static int linkCap(RunConfig config) {
        long rows = Math.max(config.train().batchTokens(), StageTrainer.tiedRowsPerMessage(config.model()));
        long floats = rows * config.model().dModel();
        if (floats > Integer.MAX_VALUE / Float.BYTES) {
            throw new IllegalArgumentException("--pipeline-stages: a micro-batch of batch_tokens " + config.train().batchTokens()
                    + " × d_model " + config.model().dModel() + " floats is above the " + Integer.MAX_VALUE / Float.BYTES
                    + " one stage-link message carries; lower batch_tokens (and raise grad_accum)");
        }
        return (int) floats;
    }

    /** Refuses, before any task starts, a pipeline the workers, the model or the config cannot run. */
    private static void checkPipeline(Pipeline pipeline, RunConfig config, int workers) {
        int stages = pipeline.stages();
        if (stages == 1) {
            return;
        }
        if (workers % stages != 0) {
            throw new IllegalArgumentException("--workers " + workers + " is not a multiple of --pipeline-stages " + stages
                    + ": every replica of the model needs one worker per stage");
        }
        String refusal = StageTrainer.refusal(config.train());
        if (refusal != null) {
            throw new IllegalArgumentException("--pipeline-stages " + stages + ": " + refusal);
        }
        try {
            GptStage.split(config.model(), stages);
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("--pipeline-stages " + stages + ": " + e.getMessage(), e);
        }
        linkCap(config);
        boolean keeps = pipeline.policy() == PipelinePolicy.ONE_F_ONE_B || pipeline.policy() == PipelinePolicy.STAGE_AWARE;
        if (keeps && config.train().gradAccum() > 1 && config.train().precision() != Precision.FP32) {
            throw new IllegalArgumentException("--pipeline-policy " + pipeline.policy().key() + " keeps several micro-batches' "
                    + "activations on a stage, which only precision fp32 allows; use --pipeline-policy 1f1b-recompute or shifted");
        }
    }

    /** A Kindling setting from the session's conf (so a notebook can change it between runs with spark.conf().set). */
    private static long positive(SparkSession spark, String key, long dflt) {
        String v = spark.conf().get(key, String.valueOf(dflt));
        try {
            long n = Long.parseLong(v.trim());
            if (n >= 1) {
                return n;
            }
        } catch (NumberFormatException ignored) {
            // reported below
        }
        throw new IllegalArgumentException(key + " must be a whole number >= 1, got \"" + v + "\"");
    }

    /** The barrier task: one worker of the ring. */
    static final class Task extends AbstractFunction1<scala.collection.Iterator<Integer>, scala.collection.Iterator<Outcome>>
            implements Serializable {
        private final Plan plan;
        private final Broadcast<SerializableConfiguration> hadoop;

        Task(Plan plan, Broadcast<SerializableConfiguration> hadoop) {
            this.plan = plan;
            this.hadoop = hadoop;
        }

        @Override
        public scala.collection.Iterator<Outcome> apply(scala.collection.Iterator<Integer> ignored) {
            try {
                return train();
            } catch (RuntimeException e) {
                CorruptInputException corrupt = CorruptInputException.of(BarrierTaskContext.get().partitionId(), e);
                throw corrupt != null ? corrupt : e;
            }
        }

        private scala.collection.Iterator<Outcome> train() {
            BarrierTaskContext ctx = BarrierTaskContext.get();
            int rank = ctx.partitionId();
            int attempt = ctx.stageAttemptNumber();
            String host = host(ctx.getTaskInfos()[rank].address());
            RunConfig cfg = RunConfig.parse(plan.configYaml(), plan.run() + "/config.yaml");
            Configuration conf = hadoop.value().value();
            Duration collective = Duration.ofSeconds(plan.collectiveTimeoutS());
            Outcome outcome;
            Fault f = plan.fault();
            if (f.rank() == rank && f.step() == 0 && (f.everyAttempt() || attempt == 0)) {
                throw new IllegalStateException("injected test fault: rank " + rank + " fails before the rendezvous");
            }
            if (f.rank() == rank && f.lateMs() > 0) {
                pause(f.lateMs());
            }
            String deviceSpec = deviceSpec(ctx, rank);
            if (plan.pipeline().stages() > 1) {
                return scala.jdk.javaapi.CollectionConverters.asScala(List.of(trainStage(ctx, rank, attempt, host, cfg, conf,
                        collective, deviceSpec)).iterator());
            }
            try (Ring.Listener server = Ring.listen(rank, host, plan.secret());
                 Coordinator.Client coordinator = Coordinator.Client.connect(plan.coordinatorHost(), plan.coordinatorPort(),
                         plan.secret(), Duration.ofSeconds(plan.rendezvousTimeoutS()))) {
                Coordinator.Rendezvous rv = coordinator.hello(attempt, rank, server.address());
                boolean told = false;
                try (Ring ring = Ring.connect(rank, rv.peers(), server, collective);
                     RingSync ringSync = new RingSync(ring, plan.bucketBytes());
                     DataParallel group = replicas(deviceSpec, cfg, plan.world() == 1 ? GradientSync.SINGLE : ringSync);
                     DatasetSource source = new DatasetSource(new DatasetReader(plan.data(), conf, cfg.train().seed(), rank,
                             plan.world(), cfg.train().batchTokens()));
                     EvalPass eval = plan.evalData() == null || cfg.train().evalInterval() == 0 ? null
                             : new EvalPass(plan.evalData(), conf, rank, plan.world(), cfg.train().batchTokens(),
                                     cfg.train().evalBatches())) {
                    try {
                        GradientSync between = plan.world() == 1 ? GradientSync.SINGLE : ringSync;
                        Trainer first = group.replicas().get(0).trainer();
                        try {
                            TrainLoop.run(group, between, source, new Checkpoints(new HadoopRunStorage(plan.run(), conf)),
                                    rv.resume(), cfg, r -> afterStep(ctx, evaluated(r, eval, group, between), rank, attempt,
                                            coordinator));
                        } catch (ReplicaCountException e) {
                            throw new IllegalArgumentException(e.checkpoint() + " was written with " + REPLICAS_PER_TASK + " = "
                                    + e.written() + " replica(s) per task, but this task trains " + e.running() + ": resume it "
                                    + "with --conf " + REPLICAS_PER_TASK + "=" + e.written() + " and at least " + e.written()
                                    + " CPU thread(s) per task (the count sets the batch splits, the order of gradient sums "
                                    + "and the dropout masks)", e);
                        }
                        outcome = new Outcome(0, checksum(first.model().params().values().toFloatArray()), null);
                        if (plan.world() > 1) {
                            LOG.log(System.Logger.Level.INFO, String.format(java.util.Locale.ROOT, "rank %d: gradient all-reduce "
                                    + "%.2f s, of which the trainer waited %.2f s (not overlapped with backward)", rank,
                                    ringSync.commSeconds(), ringSync.waitSeconds()));
                        }
                    } catch (NonFiniteException e) {
                        outcome = new Outcome(0, 0, e.getMessage());
                    } catch (RuntimeException | Error e) {
                        // Told before the ring closes, so the driver hears the cause before its peers' echoes of it.
                        told = tell(coordinator, ctx, e);
                        throw e;
                    }
                } catch (IOException | RuntimeException | Error e) {
                    // Joining the ring, opening the device or building the model failed: the driver hears this rank's cause first.
                    told = told || tell(coordinator, ctx, e);
                    throw e;
                }
            } catch (IOException e) {
                throw new UncheckedIOException("rank " + rank + ": " + describe(e), e);
            }
            return scala.jdk.javaapi.CollectionConverters.asScala(List.of(outcome).iterator());
        }

        /**
         * Worker {@code rank} of a pipeline run: stage rank mod S of replica rank div S. Besides the
         * ring of every worker (for the step's loss and norm), it joins the ring of its stage's
         * replicas (their gradient sums) and links to its replica's previous and next stage; the
         * addresses of those listeners travel over the first ring, whose members the coordinator
         * introduced and authenticated.
         */
        private Outcome trainStage(BarrierTaskContext ctx, int rank, int attempt, String host, RunConfig cfg, Configuration conf,
                                   Duration collective, String deviceSpec) {
            int stages = plan.pipeline().stages();
            int replicas = plan.world() / stages;
            int s = rank % stages;
            int j = rank / stages;
            int cap = linkCap(cfg);
            int d = cfg.model().dModel();
            boolean told = false;
            try (Ring.Listener server = Ring.listen(rank, host, plan.secret());
                 Ring.Listener stageServer = replicas > 1 ? Ring.listen(j, host, plan.secret(), "stage " + s) : null;
                 StageLink.Listener linkServer = s > 0 ? StageLink.listen(s, j, host, plan.secret()) : null;
                 Coordinator.Client coordinator = Coordinator.Client.connect(plan.coordinatorHost(), plan.coordinatorPort(),
                         plan.secret(), Duration.ofSeconds(plan.rendezvousTimeoutS()))) {
                Coordinator.Rendezvous rv = coordinator.hello(attempt, rank, server.address());
                try (Ring ring = Ring.connect(rank, rv.peers(), server, collective);
                     RingSync everyone = new RingSync(ring, plan.bucketBytes())) {
                    Ring.Peer[][] addresses = exchangeAddresses(ring, stageServer, linkServer);
                    List<Ring.Peer> stagePeers = new ArrayList<>();
                    for (int r = 0; r < replicas; r++) {
                        stagePeers.add(addresses[r * stages + s][0]);
                    }
                    LOG.log(System.Logger.Level.INFO, "rank " + rank + ": pipeline stage " + s + " of " + stages + " (blocks "
                            + Arrays.toString(GptStage.split(cfg.model(), stages)) + "), replica " + j + " of " + replicas + ", "
                            + plan.pipeline().policy().key() + " schedule, " + plan.pipeline().order().key() + " order");
                    try (Ring stageRing = replicas > 1 ? Ring.connect(j, stagePeers, stageServer, collective) : null;
                         RingSync stageSync = stageRing != null ? new RingSync(stageRing, plan.bucketBytes()) : null;
                         StageLink down = s + 1 < stages ? StageLink.connect(s, j, addresses[rank + 1][1], plan.secret(), cap,
                                 collective) : null;
                         StageLink up = s > 0 ? linkServer.accept(cap, collective) : null;
                         Device dev = Device.open(deviceSpec);
                         GptStage stage = GptStage.initialized(cfg.model(), dev, cfg.train().seed(), s, stages);
                         StageLinkChannel actIn = up == null ? null : new StageLinkChannel(up, StageLink.Kind.ACTIVATION, dev, d);
                         StageLinkChannel actOut = down == null ? null : new StageLinkChannel(down, StageLink.Kind.ACTIVATION, dev, d);
                         StageLinkChannel gradIn = down == null ? null : new StageLinkChannel(down, StageLink.Kind.GRADIENT, dev, d);
                         StageLinkChannel gradOut = up == null ? null : new StageLinkChannel(up, StageLink.Kind.GRADIENT, dev, d);
                         StageTrainer trainer = new StageTrainer(stage, stages, cfg.model(), cfg.train(), plan.pipeline().policy(),
                                 plan.pipeline().order(), stageSync != null ? stageSync : GradientSync.SINGLE, everyone,
                                 new StageTrainer.Links(actIn, actOut, gradIn, gradOut), collective);
                         DatasetSource source = new DatasetSource(new DatasetReader(plan.data(), conf, cfg.train().seed(), j,
                                 replicas, cfg.train().batchTokens()));
                         EvalPass eval = plan.evalData() == null || cfg.train().evalInterval() == 0 ? null
                                 : new EvalPass(plan.evalData(), conf, j, replicas, cfg.train().batchTokens(),
                                         cfg.train().evalBatches())) {
                        try {
                            TrainLoop.runStage(trainer, source, new Checkpoints(new HadoopRunStorage(plan.run(), conf)), rv.resume(),
                                    cfg, r -> afterStep(ctx, evaluated(r, eval, trainer), rank, attempt, coordinator));
                            return new Outcome(s, checksum(stage.params().values().toFloatArray()), null);
                        } catch (NonFiniteException e) {
                            return new Outcome(s, 0, e.getMessage());
                        } catch (RuntimeException | Error e) {
                            // Its neighbours would otherwise wait for its next message until their deadlines.
                            abort(up, down);
                            told = tell(coordinator, ctx, e);
                            throw e;
                        }
                    }
                } catch (IOException | RuntimeException | Error e) {
                    told = told || tell(coordinator, ctx, e);
                    throw e;
                }
            } catch (IOException e) {
                throw new UncheckedIOException("rank " + rank + ": " + describe(e), e);
            }
        }

        /**
         * Every worker's stage-ring and stage-link listener addresses ([rank][0], [rank][1]; null where
         * it has none), all-gathered over the run's ring.
         */
        private static Ring.Peer[][] exchangeAddresses(Ring ring, Ring.Listener stageServer, StageLink.Listener linkServer) {
            String mine = (stageServer == null ? "" : encode(stageServer.address())) + "\n"
                    + (linkServer == null ? "" : encode(linkServer.address()));
            byte[][] all = ring.allGather(mine.getBytes(StandardCharsets.UTF_8));
            Ring.Peer[][] out = new Ring.Peer[all.length][2];
            for (int r = 0; r < all.length; r++) {
                String[] parts = new String(all[r], StandardCharsets.UTF_8).split("\n", -1);
                if (parts.length != 2) {
                    throw new IllegalStateException("rank " + r + " sent a malformed pipeline address list");
                }
                out[r][0] = decode(parts[0], r);
                out[r][1] = decode(parts[1], r);
            }
            return out;
        }

        private static String encode(Ring.Peer p) {
            return p.port() + " " + p.host();
        }

        private static Ring.Peer decode(String s, int rank) {
            if (s.isEmpty()) {
                return null;
            }
            int space = s.indexOf(' ');
            try {
                int port = Integer.parseInt(s.substring(0, space));
                if (port < 1 || port > 65535) {
                    throw new NumberFormatException("port " + port);
                }
                return new Ring.Peer(s.substring(space + 1), port);
            } catch (RuntimeException e) {
                throw new IllegalStateException("rank " + rank + " sent a malformed pipeline address: " + e.getMessage(), e);
            }
        }

        /** Tells the neighbouring stages that this one stops, so they fail now rather than at their deadlines. */
        private static void abort(StageLink... links) {
            for (StageLink l : links) {
                if (l == null) {
                    continue;
                }
                try {
                    l.send(StageLink.Kind.ABORT, 0);
                } catch (RuntimeException ignored) {
                    // The link is broken already: its peer learns of it from the link.
                }
            }
        }

        /**
         * The task's model replicas: on the CPU, the plan's replicas each on its share of the task's
         * threads, summing in shared memory before {@code between}; elsewhere one on the device.
         */
        private DataParallel replicas(String deviceSpec, RunConfig cfg, GradientSync between) {
            String cpuThreads = Device.name(deviceSpec).equals("cpu") ? Device.argument(deviceSpec) : null;
            int count = cpuThreads == null ? 1 : Math.max(1, Math.min(plan.replicas(), Integer.parseInt(cpuThreads)));
            String spec = count == 1 ? deviceSpec : "cpu:" + Integer.parseInt(cpuThreads) / count;
            LOG.log(System.Logger.Level.INFO, "rank " + between.rank() + ": " + count + " replica(s) on " + spec + " each");
            // The other replicas wait at the local barrier while replica 0 runs the whole ring exchange,
            // which may itself take up to the collective timeout: they wait twice as long.
            return new DataParallel(count, between, 2 * plan.collectiveTimeoutS(), null, (r, sync) -> {
                Device dev = Device.open(spec);
                Gpt model = null;
                try {
                    model = new Gpt(cfg.model(), dev, cfg.train().seed());
                    Trainer trainer = new Trainer(model, cfg.train(), sync);
                    if (r == 0) {
                        // Each replica holds its own optimizer state: M-FAC's window is ngrads × the parameters.
                        LOG.log(System.Logger.Level.INFO, "rank " + between.rank() + ": " + trainer.optimizer().describe() + " per replica");
                    }
                    return new DataParallel.Replica(dev, model, trainer);
                } catch (RuntimeException | Error e) {
                    if (model != null) {
                        model.close();
                    }
                    dev.close();
                    throw e;
                }
            });
        }

        /** The device this task opens, from {@code --device} and the resources Spark gave the task. */
        private String deviceSpec(BarrierTaskContext ctx, int rank) {
            Map<String, List<String>> resources = new HashMap<>();
            ctx.resourcesJMap().forEach((name, info) -> resources.put(name, List.of(info.addresses())));
            TaskDevice.Choice choice = plan.device().resolve(resources, plan.threads());
            if (choice.warning() != null) {
                LOG.log(System.Logger.Level.WARNING, "rank " + rank + ": " + choice.warning());
            }
            return choice.spec();
        }

        /**
         * The host of the executor's address as Spark advertises it ({@code host:port}, or
         * {@code [v6]:port}): this worker's ring listens there, and only there.
         */
        static String host(String address) {
            int colon = address.lastIndexOf(':');
            String host = colon < 0 ? address : address.substring(0, colon);
            return host.startsWith("[") && host.endsWith("]") ? host.substring(1, host.length() - 1) : host;
        }

        private static void pause(long ms) {
            try {
                Thread.sleep(ms);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new IllegalStateException("injected test delay interrupted", e);
            }
        }

        /**
         * The step with its eval loss when it is one to evaluate after: each rank's replicas share out
         * its eval batches, and every rank's summed loss and predicted tokens, summed over the ranks in
         * one small all-reduce (every rank calls it after the same steps), give the mean over all their tokens.
         */
        private static StepResult evaluated(StepResult r, EvalPass eval, DataParallel group, GradientSync between) {
            return eval == null ? r : withEvalLoss(r, group.replicas().get(0).trainer().config(), () -> eval.run(group), between);
        }

        /**
         * The same for a pipeline stage: every stage of each replica runs the replica's eval batches
         * through the pipeline, and the last stages' sums, added over every worker, give the mean
         * over all the replicas' tokens.
         */
        private static StepResult evaluated(StepResult r, EvalPass eval, StageTrainer trainer) {
            return eval == null ? r : withEvalLoss(r, trainer.config(), () -> eval.run(trainer::evaluate), trainer.everyone());
        }

        /** One evaluation's summed loss and predicted tokens. */
        private interface EvalRun {
            EvalPass.Sums run() throws IOException;
        }

        private static StepResult withEvalLoss(StepResult r, TrainConfig cfg, EvalRun pass, GradientSync everyone) {
            if (!cfg.evaluatesAt(r.step())) {
                return r;
            }
            EvalPass.Sums own;
            try {
                own = pass.run();
            } catch (IOException e) {
                throw new UncheckedIOException("cannot read the eval data: " + e.getMessage(), e);
            }
            double[] sums = {own.loss(), own.predicted()};
            everyone.allReduceSum(sums);
            return r.withMetric(StepResult.EVAL_LOSS, sums[0] / Math.max(1, sums[1]));
        }

        /** Rank 0 reports each step to the driver; a cancelled task stops and the test-only fault strikes here. */
        private void afterStep(BarrierTaskContext ctx, StepResult r, int rank, int attempt, Coordinator.Client coordinator) {
            // A cancelled job (an interrupted notebook cell) stops here, between steps, rather than at max_steps.
            ctx.killTaskIfInterrupted();
            if (rank == 0) {
                try {
                    coordinator.report(r);
                } catch (IOException e) {
                    throw new UncheckedIOException("rank 0 lost the driver's coordinator: " + e.getMessage(), e);
                }
            }
            Fault f = plan.fault();
            if (f.rank() == rank && f.step() == r.step() && (f.everyAttempt() || attempt == 0)) {
                if (f.stall()) {
                    try {
                        Thread.sleep(Long.MAX_VALUE);
                    } catch (InterruptedException e) {
                        Thread.currentThread().interrupt();
                        throw new IllegalStateException("injected test stall of rank " + rank + " interrupted", e);
                    }
                }
                throw new IllegalStateException("injected test fault: rank " + rank + " fails after step " + r.step()
                        + " in stage attempt " + attempt);
            }
        }

        /**
         * Tells the driver why this worker stops; a failure caused by another worker's (a peer's
         * abort, or Spark killing this task because another failed) as an echo. Returns true.
         */
        private static boolean tell(Coordinator.Client coordinator, BarrierTaskContext ctx, Throwable e) {
            coordinator.failed(describe(e), isEcho(e) || ctx.isInterrupted());
            return true;
        }

        private static boolean isEcho(Throwable t) {
            for (Throwable c = t; c != null; c = c.getCause() == c ? null : c.getCause()) {
                if (c instanceof org.kindling.collective.PeerFailureException) {
                    return true;
                }
            }
            return false;
        }

        private static String describe(Throwable t) {
            StringBuilder sb = new StringBuilder(String.valueOf(t.getMessage()));
            for (Throwable c = t.getCause(); c != null && c != c.getCause(); c = c.getCause()) {
                if (c.getMessage() != null && !sb.toString().contains(c.getMessage())) {
                    sb.append(": ").append(c.getMessage());
                }
            }
            return t.getClass().getSimpleName() + ": " + sb;
        }

        /** A hash of the weights' bits, to check at the end that every replica holds the same model. */
        private static long checksum(float[] w) {
            long h = 1125899906842597L;
            for (float f : w) {
                h = 31 * h + Float.floatToRawIntBits(f);
            }
            return h;
        }
    }
}
