package org.kindling.models.train;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import org.kindling.models.GptStage;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.pipeline.InMemoryChannel;
import org.kindling.models.pipeline.PipelineException;
import org.kindling.models.pipeline.PipelineExecutor;
import org.kindling.models.pipeline.PipelinePolicy;
import org.kindling.ops.Device;

/**
 * One replica of a pipeline in this process: a {@link StageTrainer} per device, each stepping on
 * a thread of its own over in-memory channels, as the stages of {@code kindling train
 * --pipeline-stages} do on their executors (benchmarks measure the mode with it). A failed step
 * stops every stage and leaves the pipeline unusable.
 */
public final class InProcessPipeline implements AutoCloseable {
    private final List<GptStage> stages = new ArrayList<>();
    private final List<StageTrainer> trainers = new ArrayList<>();
    private final List<InMemoryChannel> channels = new ArrayList<>();
    private final List<SharedMemorySync> everyone;
    private final ExecutorService threads;
    private final Duration timeout;

    /**
     * @param devices one per stage, the caller's to close after this
     * @param timeout the longest a stage waits for a message, and a step for its stages
     */
    public InProcessPipeline(ModelConfig model, TrainConfig train, PipelinePolicy policy, List<Device> devices, Duration timeout) {
        int n = devices.size();
        this.timeout = timeout;
        this.everyone = SharedMemorySync.group(n, Math.max(1, timeout.toSeconds()));
        this.threads = Executors.newFixedThreadPool(n, r -> {
            Thread t = new Thread(r, "kindling-pipeline-stage");
            t.setDaemon(true);
            return t;
        });
        try {
            for (int s = 0; s + 1 < n; s++) {
                // One message per micro-batch each way, and the tied weight's gradient.
                channels.add(new InMemoryChannel("activations stage " + s + " -> " + (s + 1), train.gradAccum() + 1));
                channels.add(new InMemoryChannel("gradients stage " + (s + 1) + " -> " + s, train.gradAccum() + 1));
            }
            for (int s = 0; s < n; s++) {
                GptStage stage = GptStage.initialized(model, devices.get(s), train.seed(), s, n);
                stages.add(stage);
                trainers.add(new StageTrainer(stage, n, model, train, policy, PipelineExecutor.Order.STATIC, GradientSync.SINGLE, everyone.get(s),
                        new StageTrainer.Links(s > 0 ? channels.get(2 * (s - 1)) : null, s + 1 < n ? channels.get(2 * s) : null,
                                s + 1 < n ? channels.get(2 * s + 1) : null, s > 0 ? channels.get(2 * (s - 1) + 1) : null), timeout));
            }
        } catch (RuntimeException | Error e) {
            close();
            throw e;
        }
    }

    public List<StageTrainer> trainers() {
        return List.copyOf(trainers);
    }

    /** One optimizer step over {@code batches} on every stage at once; the last stage's result (loss and norm are every stage's). */
    public StepResult step(List<TokenBatch> batches) {
        List<Future<StepResult>> running = new ArrayList<>();
        for (StageTrainer t : trainers) {
            running.add(threads.submit(() -> {
                try {
                    return t.step(batches);
                } catch (RuntimeException | Error e) {
                    // The other stages would wait for this one's messages until their deadlines.
                    everyone.forEach(SharedMemorySync::abort);
                    channels.forEach(InMemoryChannel::close);
                    throw e;
                }
            }));
        }
        StepResult last = null;
        Throwable failure = null;
        long deadline = System.nanoTime() + 2 * timeout.toNanos();
        for (Future<StepResult> f : running) {
            try {
                last = f.get(Math.max(0, deadline - System.nanoTime()), TimeUnit.NANOSECONDS);
            } catch (ExecutionException e) {
                failure = failure == null ? e.getCause() : failure;
            } catch (TimeoutException e) {
                failure = failure == null ? new PipelineException("a pipeline stage did not finish its step within "
                        + 2 * timeout.toMillis() + " ms") : failure;
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new PipelineException("interrupted while the pipeline's stages stepped", e);
            }
        }
        if (failure instanceof RuntimeException re) {
            throw re;
        }
        if (failure instanceof Error err) {
            throw err;
        }
        if (failure != null) {
            throw new PipelineException("pipeline step failed: " + failure.getMessage(), failure);
        }
        return last;
    }

    /**
     * Stops the stage threads and frees the stages. A thread still running after the timeout (a
     * stage that never returned) keeps its stage: freeing memory a kernel may still touch is worse
     * than leaking it.
     */
    @Override
    public void close() {
        threads.shutdownNow();
        channels.forEach(InMemoryChannel::close);
        everyone.forEach(SharedMemorySync::abort);
        boolean stopped;
        try {
            stopped = threads.awaitTermination(timeout.toMillis(), TimeUnit.MILLISECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            stopped = false;
        }
        if (!stopped) {
            throw new PipelineException("a pipeline stage thread did not stop within " + timeout.toMillis() + " ms; its stage "
                    + "is left allocated");
        }
        trainers.forEach(StageTrainer::close);
        stages.forEach(GptStage::close);
    }
}
