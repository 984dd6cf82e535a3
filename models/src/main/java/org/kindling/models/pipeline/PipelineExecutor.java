package org.kindling.models.pipeline;

import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicReferenceArray;
import java.util.function.IntConsumer;
import java.util.stream.Collectors;
import org.kindling.models.GptStage;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.nn.Param;
import org.kindling.ops.DType;
import org.kindling.ops.Tensor;

/**
 * Runs one optimizer step's gradients through a pipeline of {@link GptStage}s in one process: one
 * thread per stage runs its work, passing activations forward and gradients backward through
 * bounded links, then sums the tied embedding/head weight's two gradients between the first and the
 * last stage. The stages' gradients are then those of one model accumulating the same micro-batches
 * (the optimizer step is the caller's). A stage runs its work in a {@link Schedule}'s static order
 * ({@link #step}) or message-driven, as AxoNN does ({@link #stepMessageDriven}).
 */
public final class PipelineExecutor {
    /** A step's outcome: mean loss over predicted tokens, and each stage's peak activation bytes. */
    public record Result(double loss, long[] peakActivationBytes) {
    }

    /** In what order each stage runs its forwards and backwards. */
    public enum Order {
        /** The schedule's program, receive by receive. */
        STATIC("static"),
        /** Whichever work's message arrived first, forwards bounded by 1F1B's in-flight counts. */
        MESSAGE_DRIVEN("message-driven");

        private final String key;

        Order(String key) {
            this.key = key;
        }

        public String key() {
            return key;
        }

        /** The order named {@code key}, or an error listing the names. */
        public static Order parse(String key) {
            for (Order o : values()) {
                if (o.key.equals(key)) {
                    return o;
                }
            }
            throw new IllegalArgumentException("pipeline order must be one of "
                    + Arrays.stream(values()).map(Order::key).collect(Collectors.joining(", ")) + ", got '" + key + "'");
        }
    }

    /**
     * What carries the messages from stage {@code from} to its neighbour {@code to}: given the
     * receiving end's sender, the sender the stage uses (e.g. one modelling a network's latency).
     * It must deliver each link's messages in the order they were sent.
     */
    @FunctionalInterface
    public interface LinkWrapper {
        StageSender wrap(int from, int to, StageSender sender);
    }

    private final List<GptStage> stages;
    private final Duration timeout;
    private final double jitter;
    private final long jitterSeed;
    private final LinkWrapper links;

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
        this(stages, timeout, jitter, jitterSeed, (from, to, sender) -> sender);
    }

    private PipelineExecutor(List<GptStage> stages, Duration timeout, double jitter, long jitterSeed, LinkWrapper links) {
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
        this.links = links;
    }

    /** This pipeline with every link's sending end wrapped by {@code links}. */
    public PipelineExecutor withLinks(LinkWrapper links) {
        if (links == null) {
            throw new IllegalArgumentException("pipeline links: a wrapper is required");
        }
        return new PipelineExecutor(stages, timeout, jitter, jitterSeed, links);
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
        long predicted = begin(schedule, step, batches, seeds);
        List<StageChannel> forward = new ArrayList<>();
        List<StageChannel> backward = new ArrayList<>();
        try {
            StageSender[] actOut = new StageSender[n];
            StageSender[] gradOut = new StageSender[n];
            for (int s = 0; s + 1 < n; s++) {
                forward.add(new InMemoryChannel("activations stage " + s + " -> " + (s + 1), batches.size()));
                backward.add(new InMemoryChannel("gradients stage " + (s + 1) + " -> " + s, batches.size()));
                actOut[s] = links.wrap(s, s + 1, forward.get(s));
                gradOut[s + 1] = links.wrap(s + 1, s, backward.get(s));
            }
            runStages(s -> execute(step, s, schedule.programs().get(s), s > 0 ? forward.get(s - 1) : null, actOut[s],
                    s + 1 < n ? backward.get(s) : null, gradOut[s]));
        } finally {
            forward.forEach(StageChannel::close);
            backward.forEach(StageChannel::close);
        }
        return finish(predicted);
    }

    /** {@link #step} in {@code order}; message-driven with 1F1B's in-flight bounds ({@link Schedule#inFlightBounds}). */
    public Result step(Schedule schedule, Order order, long step, List<TokenBatch> batches, long[] seeds) {
        return switch (order) {
            case STATIC -> step(schedule, step, batches, seeds);
            case MESSAGE_DRIVEN -> stepMessageDriven(schedule, step, batches, seeds, schedule.inFlightBounds());
        };
    }

    /**
     * The gradients of {@link #step}, computed in AxoNN's message-driven order rather than the
     * schedule's (as {@link Simulator#runMessageDriven} models it): each stage waits on one inbox
     * that both neighbours send into and, when free, runs the work whose message arrived first (a
     * forward for an activation, a backward for a gradient; the last stage's backward is ready as its
     * forward ends, and stage 0's forwards are all there at the start, in micro-batch order),
     * starting a forward only while fewer than {@code maxInFlight[s]} micro-batches are forwarded and
     * not yet backwarded. A forward checkpoints where the schedule's does; its backward recomputes first.
     *
     * <p>The bits equal the static order's because each stage still forwards and backwards in
     * micro-batch order: stage 0 takes its inputs in that order, every link delivers in the order it
     * was sent, and a stage never passes over an earlier-arrived message of the same kind (a
     * backward is never held back; forwards wait behind the bound in arrival order), so by induction
     * along the pipeline both kinds arrive and run in micro-batch order. Parameter gradients (and the
     * last stage's loss sum) are float sums, and this keeps their order the trainer's; a link that
     * reorders messages fails the step instead of changing bits.
     *
     * @param maxInFlight each stage's bound, >= 1
     * @throws PipelineException naming the first stage that failed; the others are stopped first
     */
    public Result stepMessageDriven(Schedule schedule, long step, List<TokenBatch> batches, long[] seeds, int[] maxInFlight) {
        int n = stages.size();
        if (maxInFlight.length != n) {
            throw new IllegalArgumentException("message-driven pipeline: need an in-flight bound per stage: " + n + ", got "
                    + maxInFlight.length);
        }
        for (int s = 0; s < n; s++) {
            if (maxInFlight[s] < 1) {
                throw new IllegalArgumentException("message-driven pipeline: stage " + s + "'s in-flight bound must be >= 1, got "
                        + maxInFlight[s]);
            }
        }
        long predicted = begin(schedule, step, batches, seeds);
        boolean[][] checkpointed = schedule.checkpoints();
        int m = batches.size();
        List<InMemoryInbox> inboxes = new ArrayList<>();
        try {
            StageSender[] actOut = new StageSender[n];
            StageSender[] gradOut = new StageSender[n];
            for (int s = 0; s < n; s++) {
                // Each stage receives M activations and M gradients at most.
                inboxes.add(new InMemoryInbox("stage " + s + "'s inbox", 2 * m));
            }
            for (int s = 0; s + 1 < n; s++) {
                actOut[s] = links.wrap(s, s + 1, inboxes.get(s + 1).sender(StageInbox.Kind.ACTIVATION));
                gradOut[s + 1] = links.wrap(s + 1, s, inboxes.get(s).sender(StageInbox.Kind.GRADIENT));
            }
            runStages(s -> executeMessageDriven(step, s, m, checkpointed[s], maxInFlight[s], inboxes.get(s), actOut[s], gradOut[s]));
        } finally {
            inboxes.forEach(InMemoryInbox::close);
        }
        return finish(predicted);
    }

    /** Checks the step's shape and starts it on every stage; the step's predicted tokens. */
    private long begin(Schedule schedule, long step, List<TokenBatch> batches, long[] seeds) {
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
        return predicted;
    }

    /** Runs {@code body} for every stage on its own thread; a failure stops the others and is rethrown naming its stage. */
    private void runStages(IntConsumer body) {
        int n = stages.size();
        AtomicReferenceArray<Throwable> failures = new AtomicReferenceArray<>(n);
        Thread[] threads = new Thread[n];
        for (int s = 0; s < n; s++) {
            int stage = s;
            threads[s] = new Thread(() -> {
                try {
                    body.accept(stage);
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
        rethrow(failures);
    }

    /** After every stage's work: the tied weight's gradient summed, the loss and the activation peaks. */
    private Result finish(long predicted) {
        int n = stages.size();
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
        int stage = -1;
        for (int s = 0; s < failures.length(); s++) {
            Throwable t = failures.get(s);
            if (t != null && (chosen == null || knockOn(chosen) && !knockOn(t))) {
                chosen = t;
                stage = s;
            }
        }
        if (chosen instanceof Error e) {
            throw e;
        }
        if (chosen != null) {
            throw new PipelineException("pipeline step failed on stage " + stage + ": " + chosen.getMessage(), chosen);
        }
    }

    /** Whether a stage failed only because another's failure interrupted it. */
    private static boolean knockOn(Throwable t) {
        return t instanceof PipelineException && t.getCause() instanceof InterruptedException;
    }

    private void execute(long step, int s, List<Command> program, StageChannel actIn, StageSender actOut, StageChannel gradIn,
                         StageSender gradOut) {
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
    public static void runProgram(GptStage stage, List<Command> program, StageChannel actIn, StageSender actOut,
                                  StageChannel gradIn, StageSender gradOut, Duration timeout, AfterCompute after) {
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

    /** A forward (its input arrived) or backward (its gradient arrived) a message-driven stage can run. */
    private record Work(boolean backward, int mb, Tensor data) {
    }

    private void executeMessageDriven(long step, int s, int m, boolean[] checkpointed, int bound, StageInbox inbox,
                                      StageSender actOut, StageSender gradOut) {
        runMessageDriven(stages.get(s), m, checkpointed, bound, inbox, actOut, gradOut, timeout,
                jitter > 0 ? (c, tookNanos) -> delay(step, s, c, tookNanos) : null);
    }

    /**
     * Runs one stage's share of a message-driven step {@link GptStage#startStep started} on it:
     * whichever forward input or backward gradient reached {@code inbox} first, forwards only while
     * fewer than {@code bound} micro-batches are in flight, checkpointing the micro-batches
     * {@code checkpointed} marks and recomputing them before their backward (see {@link
     * #stepMessageDriven}). The loop of every stage thread here, and of a stage that is a process of
     * its own whose inbox its network links feed ({@link ChannelInbox}).
     *
     * @param after called after each computation with its duration, or null
     * @throws PipelineException when nothing arrives within the timeout, a link reorders, or the wait is interrupted
     */
    public static void runMessageDriven(GptStage stage, int m, boolean[] checkpointed, int bound, StageInbox inbox,
                                        StageSender actOut, StageSender gradOut, Duration timeout, AfterCompute after) {
        int s = stage.index();
        // In arrival order.
        List<Work> ready = new ArrayList<>();
        if (stage.first()) {
            for (int mb = 0; mb < m; mb++) {
                ready.add(new Work(false, mb, null));
            }
        }
        int forwarded = 0;
        int backwarded = 0;
        try {
            while (backwarded < m) {
                drain(s, stage, inbox, ready, Duration.ZERO);
                Work w = null;
                // The ready list is in arrival order: the first runnable entry arrived first.
                for (Work r : ready) {
                    if (r.backward() || forwarded - backwarded < bound) {
                        w = r;
                        break;
                    }
                }
                if (w == null) {
                    if (!drain(s, stage, inbox, ready, timeout)) {
                        throw new PipelineException("stage " + s + ": no activation or gradient arrived within " + timeout.toMillis()
                                + " ms (" + forwarded + " of " + m + " micro-batches forwarded, " + backwarded + " backwarded, bound "
                                + bound + " in flight)");
                    }
                    continue;
                }
                int mb = w.mb();
                checkOrder(s, w.backward() ? "backward" : "forward", mb, w.backward() ? backwarded : forwarded);
                ready.remove(w);
                if (!w.backward()) {
                    Command c = new Command(checkpointed[mb] ? Command.Op.FORWARD_CHECKPOINT : Command.Op.FORWARD, mb);
                    long t0 = System.nanoTime();
                    Tensor out = stage.forward(mb, w.data(), c.op() == Command.Op.FORWARD);
                    forwarded++;
                    after(after, c, t0);
                    if (out != null) {
                        actOut.send(mb, copy(out), timeout);
                    } else {
                        // The loss is local: the last stage's backward is ready now, after what arrived while it forwarded.
                        drain(s, stage, inbox, ready, Duration.ZERO);
                        ready.add(new Work(true, mb, null));
                    }
                } else {
                    Tensor grad = w.data();
                    try {
                        if (checkpointed[mb]) {
                            long t0 = System.nanoTime();
                            stage.recompute(mb);
                            after(after, new Command(Command.Op.RECOMPUTE, mb), t0);
                        }
                        long t0 = System.nanoTime();
                        Tensor in = stage.backward(mb, grad);
                        backwarded++;
                        after(after, new Command(Command.Op.BACKWARD, mb), t0);
                        if (in != null) {
                            gradOut.send(mb, copy(in), timeout);
                        }
                    } finally {
                        if (grad != null) {
                            grad.close();
                        }
                    }
                }
            }
        } finally {
            for (Work w : ready) {
                if (w.data() != null) {
                    w.data().close();
                }
            }
        }
    }

    /**
     * Moves what has arrived in the inbox (waiting up to {@code wait} for a first message) to the
     * ready list, in arrival order, on the stage's device; whether anything came.
     */
    private static boolean drain(int s, GptStage stage, StageInbox inbox, List<Work> ready, Duration wait) {
        boolean any = false;
        for (StageInbox.Message msg; (msg = inbox.poll(any ? Duration.ZERO : wait)) != null; ) {
            boolean gradient = msg.kind() == StageInbox.Kind.GRADIENT;
            if (gradient ? stage.last() : stage.first()) {
                msg.data().close();
                throw new PipelineException("stage " + s + ": " + msg.kind() + " of micro-batch " + msg.microBatch()
                        + " arrived, but the " + (gradient ? "last" : "first") + " stage receives none");
            }
            ready.add(new Work(gradient, msg.microBatch(), onDevice(stage, msg.data())));
            any = true;
        }
        return any;
    }

    /** Bits depend on summing micro-batches in order (see {@link #stepMessageDriven}); a reordering link is an error. */
    private static void checkOrder(int s, String what, int mb, int expected) {
        if (mb != expected) {
            throw new PipelineException("stage " + s + ": " + what + " of micro-batch " + mb + " came before micro-batch " + expected
                    + "'s; a link delivered out of order, and gradients summed in another order would change bits");
        }
    }

    /** Hands computation {@code c}, begun at {@code t0}, to {@code after} (when there is one). */
    private static void after(AfterCompute after, Command c, long t0) {
        if (after != null) {
            after.after(c, System.nanoTime() - t0);
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

    /** A copy of {@code t} on its device, for a message: the original stays valid only until the stage's next pass. */
    public static Tensor copy(Tensor t) {
        Tensor out = t.device().allocate(DType.F32, t.shape());
        t.device().backend().copy(out, t);
        return out;
    }

    /** The message on the stage's own device: stages of one process may each have their own. */
    public static Tensor onDevice(GptStage stage, Tensor t) {
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
