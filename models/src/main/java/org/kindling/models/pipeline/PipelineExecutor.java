package org.kindling.models.pipeline;

import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicReferenceArray;
import org.kindling.models.GptStage;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.nn.Param;
import org.kindling.ops.DType;
import org.kindling.ops.Tensor;

/**
 * Runs one optimizer step's gradients through a pipeline of {@link GptStage}s in one process: one
 * thread per stage executes its program of a {@link Schedule}, passing activations forward and
 * gradients backward through bounded {@link StageChannel}s, then sums the tied embedding/head
 * weight's two gradients between the first and the last stage. The stages' gradients are then
 * those of one model accumulating the same micro-batches (the optimizer step is the caller's).
 */
public final class PipelineExecutor {
    /** A step's outcome: mean loss over predicted tokens, and each stage's peak activation bytes. */
    public record Result(double loss, long[] peakActivationBytes) {
    }

    private final List<GptStage> stages;
    private final Duration timeout;
    private final double jitter;
    private final long jitterSeed;

    /**
     * @param stages stage 0 first, as {@link GptStage#split} cuts the model
     * @param timeout the longest any stage waits for a message, or for room to send one
     */
    public PipelineExecutor(List<GptStage> stages, Duration timeout) {
        this(stages, timeout, 0, 0);
    }

    /**
     * A pipeline with injected compute jitter, to measure how a schedule copes with uneven stages:
     * after each computation that took d, its stage waits d·jitter·u more, u uniform in [0, 1) drawn
     * from {@code jitterSeed} and the step, stage, kind of computation and micro-batch alone (as the
     * simulator's {@link Costs}), so every policy sees the same slowdowns for the same work.
     */
    public PipelineExecutor(List<GptStage> stages, Duration timeout, double jitter, long jitterSeed) {
        if (!(jitter >= 0) || Double.isInfinite(jitter)) {
            throw new IllegalArgumentException("pipeline jitter must be a finite number >= 0, got " + jitter);
        }
        this.jitter = jitter;
        this.jitterSeed = jitterSeed;
        if (stages.isEmpty()) {
            throw new IllegalArgumentException("a pipeline needs at least one stage");
        }
        for (int s = 0; s < stages.size(); s++) {
            if (stages.get(s).index() != s || stages.get(s).last() != (s == stages.size() - 1)) {
                throw new IllegalArgumentException("pipeline stage " + s + " is stage " + stages.get(s).index()
                        + (stages.get(s).last() ? " (a last stage)" : "") + " of its split; stages must be given in order");
            }
        }
        if (timeout.isNegative() || timeout.isZero()) {
            throw new IllegalArgumentException("pipeline timeout must be > 0, got " + timeout);
        }
        this.stages = List.copyOf(stages);
        this.timeout = timeout;
    }

    /**
     * Gradients of optimizer step {@code step} over {@code batches} (one per micro-batch), in the order
     * {@code schedule} gives; the loss is the mean over every predicted token of the step, as the
     * trainer's. Each stage's gradients are zeroed first.
     *
     * @param seeds each micro-batch's dropout seed
     * @throws PipelineException naming the first stage that failed; the others are stopped first
     */
    public Result step(Schedule schedule, long step, List<TokenBatch> batches, long[] seeds) {
        int n = stages.size();
        if (schedule.stages() != n || schedule.microBatches() != batches.size()) {
            throw new IllegalArgumentException("a schedule of " + schedule.stages() + " stages and " + schedule.microBatches()
                    + " micro-batches for " + n + " stages and " + batches.size() + " micro-batches");
        }
        long predicted = 0;
        long tokens = 0;
        for (TokenBatch b : batches) {
            predicted += b.predicted();
            tokens += b.size();
        }
        if (predicted == 0) {
            throw new IllegalArgumentException("step " + step + ": the step's micro-batches predict no token");
        }
        for (GptStage s : stages) {
            s.startStep(step, batches, seeds, (float) (1.0 / predicted), 1.0 / tokens);
        }
        List<StageChannel> forward = new ArrayList<>();
        List<StageChannel> backward = new ArrayList<>();
        for (int s = 0; s + 1 < n; s++) {
            forward.add(new InMemoryChannel("activations stage " + s + " -> " + (s + 1), batches.size()));
            backward.add(new InMemoryChannel("gradients stage " + (s + 1) + " -> " + s, batches.size()));
        }
        AtomicReferenceArray<Throwable> failures = new AtomicReferenceArray<>(n);
        Thread[] threads = new Thread[n];
        try {
            for (int s = 0; s < n; s++) {
                int stage = s;
                threads[s] = new Thread(() -> {
                    try {
                        execute(step, stage, schedule.programs().get(stage), stage > 0 ? forward.get(stage - 1) : null,
                                stage + 1 < n ? forward.get(stage) : null, stage + 1 < n ? backward.get(stage) : null,
                                stage > 0 ? backward.get(stage - 1) : null);
                    } catch (Throwable t) {
                        failures.set(stage, t);
                        // The others would wait for this stage's messages until their deadlines.
                        for (Thread other : threads) {
                            if (other != null && other != Thread.currentThread()) {
                                other.interrupt();
                            }
                        }
                    }
                }, "kindling-stage-" + s);
                threads[s].setDaemon(true);
            }
            for (Thread t : threads) {
                t.start();
            }
            join(threads);
        } finally {
            forward.forEach(StageChannel::close);
            backward.forEach(StageChannel::close);
        }
        rethrow(failures);
        reduceTied();
        long[] peaks = new long[n];
        for (int s = 0; s < n; s++) {
            peaks[s] = stages.get(s).peakActivationBytes();
        }
        return new Result(stages.get(n - 1).lossSum() / predicted, peaks);
    }

    /** Waits for every stage thread, each at most the message timeout past the step's; a stage still running is an error. */
    private void join(Thread[] threads) {
        boolean interrupted = false;
        for (Thread t : threads) {
            long deadline = System.nanoTime() + timeout.toNanos() * 2;
            while (t.isAlive() && System.nanoTime() - deadline < 0) {
                try {
                    t.join(Math.max(1, (deadline - System.nanoTime()) / 1_000_000));
                } catch (InterruptedException e) {
                    interrupted = true;
                    for (Thread other : threads) {
                        other.interrupt();
                    }
                }
            }
            if (t.isAlive()) {
                throw new PipelineException(t.getName() + " did not finish within " + 2 * timeout.toMillis()
                        + " ms of its last message's deadline; its stage is left as it is");
            }
        }
        if (interrupted) {
            Thread.currentThread().interrupt();
            throw new PipelineException("interrupted while the pipeline's stages ran; they have stopped");
        }
    }

    /** The first stage's own failure, rather than the interruptions it caused in the others. */
    private static void rethrow(AtomicReferenceArray<Throwable> failures) {
        Throwable chosen = null;
        for (int s = 0; s < failures.length(); s++) {
            Throwable t = failures.get(s);
            if (t != null && (chosen == null || knockOn(chosen) && !knockOn(t))) {
                chosen = t;
            }
        }
        if (chosen instanceof Error e) {
            throw e;
        }
        if (chosen != null) {
            throw new PipelineException("pipeline step failed: " + chosen.getMessage(), chosen);
        }
    }

    /** Whether a stage failed only because another's failure interrupted it. */
    private static boolean knockOn(Throwable t) {
        return t instanceof PipelineException && t.getCause() instanceof InterruptedException;
    }

    private void execute(long step, int s, List<Command> program, StageChannel actIn, StageChannel actOut, StageChannel gradIn,
                         StageChannel gradOut) {
        runProgram(stages.get(s), program, actIn, actOut, gradIn, gradOut, timeout,
                jitter > 0 ? (c, tookNanos) -> delay(step, s, c, tookNanos) : null);
    }

    /** What a stage does after each computation of its program (e.g. injected jitter). */
    @FunctionalInterface
    public interface AfterCompute {
        void after(Command command, long tookNanos);
    }

    /**
     * Runs one stage's program of a step {@link GptStage#startStep started} on it, over its channels
     * (null where the stage has no neighbour): the loop of every stage thread here, and of a stage
     * that is a process of its own with channels to other hosts.
     *
     * @param after called after each computation with its duration, or null
     * @throws PipelineException when a message is late, out of step or the wait is interrupted
     */
    public static void runProgram(GptStage stage, List<Command> program, StageChannel actIn, StageChannel actOut,
                                  StageChannel gradIn, StageChannel gradOut, Duration timeout, AfterCompute after) {
        int s = stage.index();
        Map<Integer, Tensor> received = new HashMap<>();
        Map<Integer, Tensor> toSend = new HashMap<>();
        try {
            for (Command c : program) {
                int mb = c.microBatch();
                long t0 = System.nanoTime();
                switch (c.op()) {
                    case RECV_ACT, RECV_GRAD -> received.put(mb, onDevice(stage,
                            (c.op() == Command.Op.RECV_ACT ? actIn : gradIn).receive(mb, timeout)));
                    case FORWARD, FORWARD_CHECKPOINT -> {
                        Tensor out = stage.forward(mb, received.remove(mb), c.op() == Command.Op.FORWARD);
                        if (out != null) {
                            toSend.put(mb, copy(out));
                        }
                    }
                    case RECOMPUTE -> stage.recompute(mb);
                    case BACKWARD -> {
                        Tensor grad = received.remove(mb);
                        try {
                            Tensor in = stage.backward(mb, grad);
                            if (in != null) {
                                toSend.put(mb, copy(in));
                            }
                        } finally {
                            if (grad != null) {
                                grad.close();
                            }
                        }
                    }
                    case SEND_ACT -> actOut.send(mb, take(toSend, mb, s, c), timeout);
                    case SEND_GRAD -> gradOut.send(mb, take(toSend, mb, s, c), timeout);
                }
                if (after != null && c.op().computes()) {
                    after.after(c, System.nanoTime() - t0);
                }
            }
        } finally {
            received.values().forEach(Tensor::close);
            toSend.values().forEach(Tensor::close);
        }
    }

    private void delay(long step, int s, Command c, long tookNanos) {
        int kind = c.op() == Command.Op.FORWARD_CHECKPOINT ? Command.Op.FORWARD.ordinal() : c.op().ordinal();
        long key = jitterSeed * 0x9E3779B97F4A7C15L + step * 0xBF58476D1CE4E5B9L + ((long) s << 40) + ((long) kind << 32)
                + c.microBatch();
        long nanos = (long) (tookNanos * jitter * new java.util.SplittableRandom(key).nextDouble());
        try {
            Thread.sleep(nanos / 1_000_000, (int) (nanos % 1_000_000));
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new PipelineException("stage " + s + ": interrupted in the jitter after " + c, e);
        }
    }

    private static Tensor take(Map<Integer, Tensor> toSend, int mb, int s, Command c) {
        Tensor t = toSend.remove(mb);
        if (t == null) {
            throw new PipelineException("stage " + s + ": " + c + " has nothing computed to send");
        }
        return t;
    }

    private static Tensor copy(Tensor t) {
        Tensor out = t.device().allocate(DType.F32, t.shape());
        t.device().backend().copy(out, t);
        return out;
    }

    /** The message on the stage's own device: stages of one process may each have their own. */
    private static Tensor onDevice(GptStage stage, Tensor t) {
        if (t.device() == stage.device()) {
            return t;
        }
        try (t) {
            return stage.device().allocate(DType.F32, t.shape()).copyFrom(t.toFloatArray());
        }
    }

    /** wte's gradient on the first and the last stage becomes their sum (embedding part + head part) on both. */
    private void reduceTied() {
        if (stages.size() < 2) {
            return;
        }
        Param a = stages.get(0).tied();
        Param b = stages.get(stages.size() - 1).tied();
        float[] ga = a.grad().toFloatArray();
        float[] gb = b.grad().toFloatArray();
        for (int i = 0; i < ga.length; i++) {
            ga[i] += gb[i];
        }
        a.grad().copyFrom(ga);
        b.grad().copyFrom(ga);
    }
}
