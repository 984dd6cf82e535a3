package org.kindling.cli;

import java.io.PrintWriter;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.Callable;
import org.kindling.models.GptStage;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.pipeline.PipelineExecutor;
import org.kindling.models.pipeline.PipelinePolicy;
import org.kindling.models.pipeline.Schedule;
import org.kindling.ops.Device;
import org.kindling.ops.Seeds;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

@Command(name = "pipeline", mixinStandardHelpOptions = true,
        description = {"Pipeline-parallel gradient steps of a GPT cut into --stages stages, each on its own thread and its own",
            "share of the CPU threads, running a schedule per --policy over --micro-batches micro-batches of --seq tokens",
            "(activations and gradients handed between the threads) in each --order: static (the schedule's program) or",
            "message-driven (AxoNN: each stage runs whichever forward input or backward gradient arrived first, forwards",
            "while fewer than 1F1B's min(S - s, M) micro-batches are in flight, checkpointing where the policy does); per",
            "policy, --jitter and order: the median ms of one step's forwards and backwards (no optimizer step) and each",
            "stage's peak activation bytes (its layers' saved buffers, the kept micro-batches' copies and the inputs held for",
            "backward). Every row runs on the same stages and batches in this run. Jitter J: after each computation of",
            "duration d the stage waits d·J·u more, u uniform in [0, 1) from a seed, the step, the stage, the kind of",
            "computation and the micro-batch, so both orders see the same slowdowns for the same work."})
final class PipelineBench implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--stages", description = "pipeline stages S, at most --layers (default ${DEFAULT-VALUE})", defaultValue = "2")
    int stages;

    @Option(names = "--micro-batches", description = "micro-batches M per step (default ${DEFAULT-VALUE})", defaultValue = "8")
    int microBatches;

    @Option(names = "--policy", split = ",", description = "schedule policies, one row each: 1f1b, 1f1b-recompute, stage-aware, "
            + "shifted (default ${DEFAULT-VALUE})", defaultValue = "1f1b,1f1b-recompute,stage-aware,shifted")
    List<String> policies;

    @Option(names = "--jitter", split = ",", description = "compute jitter J, one row per policy each (default ${DEFAULT-VALUE})",
            defaultValue = "0")
    List<Double> jitters;

    @Option(names = "--order", split = ",", description = "execution orders, one row per policy and jitter each: static, "
            + "message-driven (default ${DEFAULT-VALUE})", defaultValue = "static,message-driven")
    List<String> orders;

    @Option(names = "--slack", description = {"micro-batches a message-driven stage may hold in flight beyond 1F1B's min(S-s, M),",
        "at most M (AxoNN's gain needs room to run ahead; the static order ignores it) (default ${DEFAULT-VALUE})"},
            defaultValue = "0")
    int slack;

    @Option(names = "--layers", description = "blocks (default ${DEFAULT-VALUE})", defaultValue = "4")
    int layers;

    @Option(names = "--d-model", description = "channels (default ${DEFAULT-VALUE})", defaultValue = "128")
    int dModel;

    @Option(names = "--heads", description = "attention heads (default ${DEFAULT-VALUE})", defaultValue = "4")
    int heads;

    @Option(names = "--vocab", description = "vocabulary size (default ${DEFAULT-VALUE})", defaultValue = "256")
    int vocab;

    @Option(names = "--seq", description = "tokens per micro-batch, one sequence (default ${DEFAULT-VALUE})", defaultValue = "128")
    int seq;

    @Option(names = "--steps", description = "timed steps per row, after --warmup untimed ones (default ${DEFAULT-VALUE})",
            defaultValue = "5")
    int steps;

    @Option(names = "--warmup", description = "untimed steps first, while the JIT compiles (default ${DEFAULT-VALUE})",
            defaultValue = "1")
    int warmup;

    @Option(names = "--timeout", description = "seconds a stage waits for a message at most (default ${DEFAULT-VALUE})",
            defaultValue = "120")
    int timeoutSeconds;

    @CommandLine.Mixin
    BenchOptions common;

    @Override
    public Integer call() throws Exception {
        CommandLine cmd = spec.commandLine();
        BenchOptions.requirePositive(cmd, "--stages", stages, "--micro-batches", microBatches, "--layers", layers, "--d-model", dModel,
                "--heads", heads, "--vocab", vocab, "--seq", seq, "--steps", steps, "--timeout", timeoutSeconds);
        if (warmup < 0) {
            throw new CommandLine.ParameterException(cmd, "--warmup must be >= 0, got " + warmup);
        }
        if (stages > layers) {
            throw new CommandLine.ParameterException(cmd, "--stages " + stages + " exceeds --layers " + layers
                    + ": every stage holds at least one block");
        }
        if (dModel % heads != 0) {
            throw new CommandLine.ParameterException(cmd, "--d-model " + dModel + " must be a multiple of --heads " + heads);
        }
        List<PipelinePolicy> parsed = new ArrayList<>();
        for (String p : policies) {
            try {
                parsed.add(PipelinePolicy.parse(p.trim()));
            } catch (IllegalArgumentException e) {
                throw new CommandLine.ParameterException(cmd, "--policy: " + e.getMessage());
            }
        }
        List<PipelineExecutor.Order> parsedOrders = new ArrayList<>();
        for (String o : orders) {
            try {
                parsedOrders.add(PipelineExecutor.Order.parse(o.trim()));
            } catch (IllegalArgumentException e) {
                throw new CommandLine.ParameterException(cmd, "--order: " + e.getMessage());
            }
        }
        for (double j : jitters) {
            if (!(j >= 0) || Double.isInfinite(j)) {
                throw new CommandLine.ParameterException(cmd, "--jitter values must be finite numbers >= 0, got " + j);
            }
        }
        if (slack < 0) {
            throw new CommandLine.ParameterException(cmd, "--slack must be at least 0, got " + slack);
        }
        common.requireCpu(cmd, "bench pipeline");
        int threads = common.threads(cmd);
        int perStage = Math.max(1, threads / stages);
        ModelConfig cfg = ModelConfig.gpt(vocab, dModel, layers, heads, heads, seq, 4, 0, 0.02, 1e-5);
        List<TokenBatch> batches = new ArrayList<>();
        SplittableRandom r = new SplittableRandom(1);
        long[] seeds = new long[microBatches];
        for (int mb = 0; mb < microBatches; mb++) {
            int[] tokens = new int[seq];
            for (int i = 0; i < seq; i++) {
                tokens[i] = r.nextInt(vocab);
            }
            batches.add(TokenBatch.single(tokens));
            seeds[mb] = Seeds.derive(1, mb);
        }
        PrintWriter err = cmd.getErr();
        int[] bounds = GptStage.split(cfg, stages);
        err.printf("pipeline of %d stages (blocks %s), %d micro-batches of %d tokens, %d layers × d_model %d, %d threads per stage%n",
                stages, Arrays.toString(bounds), microBatches, seq, layers, dModel, perStage);
        List<Device> devices = new ArrayList<>();
        List<GptStage> built = new ArrayList<>();
        try {
            for (int s = 0; s < stages; s++) {
                devices.add(common.open(perStage));
                built.add(new GptStage(cfg, devices.get(s), 1, s, stages));
            }
            for (double jitter : jitters) {
                PipelineExecutor pipe = new PipelineExecutor(built, Duration.ofSeconds(timeoutSeconds), jitter, 7);
                for (PipelinePolicy policy : parsed) {
                    Schedule schedule = Schedule.build(stages, microBatches, policy);
                    for (PipelineExecutor.Order order : parsedOrders) {
                        long[] step = {0};
                        PipelineExecutor.Result[] last = new PipelineExecutor.Result[1];
                        int[] inFlight = schedule.inFlightBounds();
                        for (int s = 0; s < inFlight.length; s++) {
                            inFlight[s] = Math.min(microBatches, inFlight[s] + slack);
                        }
                        Timing.Stats t = Timing.measure(new Timing.Rule(warmup, steps, 0),
                                () -> last[0] = order == PipelineExecutor.Order.STATIC ? pipe.step(schedule, step[0]++, batches, seeds)
                                        : pipe.stepMessageDriven(schedule, step[0]++, batches, seeds, inFlight));
                        double ms = t.median() * 1e3;
                        long[] peaks = last[0].peakActivationBytes();
                        err.printf("  %-15s %-14s jitter %.2f  %10.2f ms per step (median of %d)  peak activations per stage %s%n",
                                policy.key(), order.key(), jitter, ms, t.reps(), Arrays.stream(peaks).mapToObj(BenchOptions::mib).toList());
                        err.flush();
                        if (common.json) {
                            Map<String, Object> row = new LinkedHashMap<>();
                            row.put("bench", "pipeline");
                            row.put("policy", policy.key());
                            row.put("order", order.key());
                            row.put("slack", order == PipelineExecutor.Order.STATIC ? 0 : slack);
                            row.put("stages", stages);
                            row.put("micro_batches", microBatches);
                            row.put("jitter", jitter);
                            row.put("ms_per_step", BenchOptions.round(ms));
                            row.put("peak_activation_bytes", peaks);
                            Json.printLine(cmd.getOut(), row);
                        }
                    }
                }
            }
        } finally {
            built.forEach(GptStage::close);
            devices.forEach(Device::close);
        }
        return 0;
    }
}
