package org.kindling.models.train;

import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import java.util.function.Consumer;
import java.util.function.Function;
import java.util.function.IntConsumer;
import org.kindling.models.config.RunConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.io.Checkpoints;

/**
 * The training loop: resumes from a checkpoint if there is one, steps until {@code max_steps},
 * hands every step's result to the caller (who owns the progress display, so a run shows one
 * progress line per interval), and checkpoints every {@code checkpoint_interval} steps and at the end. In a data-parallel run every worker runs it with its own data slice; rank 0
 * writes the checkpoints, with every worker's data position.
 */
public final class TrainLoop {
    private static final System.Logger LOG = System.getLogger(TrainLoop.class.getName());

    private TrainLoop() {
    }

    /**
     * A single-process run resuming from the run's LATEST checkpoint.
     *
     * @param onStep sees every step's result (progress display, metrics files)
     * @return the step the run ended at
     */
    public static int run(Trainer trainer, DataSource data, Checkpoints checkpoints, RunConfig config,
                          Consumer<StepResult> onStep) {
        return run(trainer, data, checkpoints, checkpoints.latest(), config, onStep);
    }

    /**
     * A run resuming from {@code resume}: in a data-parallel run the coordinator names it, so that
     * every worker restores the same checkpoint.
     */
    public static int run(Trainer trainer, DataSource data, Checkpoints checkpoints, Optional<String> resume,
                          RunConfig config, Consumer<StepResult> onStep) {
        // A group of one: the split of a batch into one part is the batch itself.
        return run(List.of(trainer), sources -> trainer.step(sources.get(0)), work -> work.accept(0), trainer.sync(), data,
                checkpoints, resume, config, onStep);
    }

    /**
     * The loop of one worker that trains as a group of in-process replicas ({@link DataParallel}
     * built over {@code between}): the worker reads its batches from {@code data} as a single
     * trainer would, splits each across the replicas ({@link TokenBatch#split}), and checkpoints
     * and resumes as one worker of {@code between}, so the data positions and checkpoints are
     * those of a run with one replica per worker. Every replica restores the checkpoint; replica 0
     * of worker 0 writes them, with the replica count, and resuming one written by another count
     * fails with a {@link ReplicaCountException} (one that does not record it resumes with a warning).
     *
     * @param onStep sees every step's result in the calling thread, between steps, where it may
     *     use {@code between}'s collectives (every worker calls it after the same steps)
     */
    public static int run(DataParallel group, GradientSync between, DataSource data, Checkpoints checkpoints,
                          Optional<String> resume, RunConfig config, Consumer<StepResult> onStep) {
        return run(group.replicas().stream().map(DataParallel.Replica::trainer).toList(), group::step, work -> group.onEach(r -> {
            work.accept(r);
            return null;
        }), between, data, checkpoints, resume, config, onStep);
    }

    /**
     * The loop of one pipeline stage of one replica ({@link StageTrainer}): reads the replica's
     * micro-batches from {@code data} (every stage of a replica reads the same slice, so each has
     * its batches' tokens, positions and targets), steps, and checkpoints as one model: replica 0 of
     * every stage writes its share, every worker then meets (so the shares are complete), and worker
     * 0 gathers them into one checkpoint with each replica's data position
     * ({@link Checkpoints#saveParts}). A resume restores each stage's tensors of that checkpoint,
     * which any parallelism over the same number of replicas (data-parallel workers, or pipelines of
     * any stage count) may have written.
     */
    public static int runStage(StageTrainer trainer, DataSource data, Checkpoints checkpoints, Optional<String> resume,
                               RunConfig config, Consumer<StepResult> onStep) {
        TrainConfig cfg = trainer.config();
        GradientSync everyone = trainer.everyone();
        int replicas = trainer.replicas().world();
        int stages = trainer.stages();
        resume.ifPresent(name -> {
            Checkpoints.State state = checkpoints.restorePart(name, trainer.stage().params(), trainer.optimizer(),
                    trainer.modelTensors());
            trainer.restoreStep(state.step());
            seek(checkpoints, name, state, data, trainer.replica(), replicas, 1, "pipeline replica(s) (--workers / --pipeline-stages)");
        });
        while (trainer.stepCount() < cfg.maxSteps()) {
            List<TokenBatch> batches = new ArrayList<>();
            for (int micro = 0; micro < cfg.gradAccum(); micro++) {
                batches.add(data.next());
            }
            StepResult r = trainer.step(batches);
            onStep.accept(r);
            boolean interval = cfg.checkpointInterval() > 0 && r.step() % cfg.checkpointInterval() == 0;
            if (interval || r.step() == cfg.maxSteps()) {
                if (trainer.replicas().rank() == 0) {
                    checkpoints.savePart(r.step(), trainer.stage().index(), trainer.stage().params(), trainer.optimizer());
                }
                long[] all = everyone.allGather(data.position());
                if (everyone.rank() == 0) {
                    long[] positions = new long[replicas];
                    for (int j = 0; j < replicas; j++) {
                        positions[j] = all[j * stages];
                    }
                    checkpoints.saveParts(r.step(), stages, trainer.tensorOrder(), config, cfg.keepCheckpoints(), 1, positions);
                }
            }
        }
        return trainer.stepCount();
    }

    /**
     * Checks that checkpoint {@code name} was written by {@code world} workers of {@code replicas}
     * replicas each, and moves {@code data} to worker {@code rank}'s position in it.
     */
    private static void seek(Checkpoints checkpoints, String name, Checkpoints.State state, DataSource data, int rank, int world,
                             int replicas, String workers) {
        String where = checkpoints.storage().describe("checkpoints/" + name);
        if (state.dataPositions().length != world) {
            throw new IllegalStateException(where + " was written by " + state.dataPositions().length + " worker(s); resume it with "
                    + "the same number of " + workers + ", not " + world);
        }
        if (state.replicasPerWorker().isEmpty()) {
            // Written before the count was recorded: any count resumes it, as before.
            LOG.log(System.Logger.Level.WARNING, where + " does not record its replicas per worker; resuming with "
                    + replicas + ", which may split batches and draw dropout masks unlike the run that wrote it");
        } else if (state.replicasPerWorker().getAsInt() != replicas) {
            throw new ReplicaCountException(where, state.replicasPerWorker().getAsInt(), replicas);
        }
        data.seek(state.dataPositions()[rank]);
        LOG.log(System.Logger.Level.INFO, "resumed from " + where);
    }

    /**
     * The loop of {@code trainers}, the replicas of one worker of {@code between}, whose one step
     * over a source per replica {@code step} takes, and which {@code eachReplica} runs work on at
     * once (by replica index), as their collectives need.
     */
    private static int run(List<Trainer> trainers, Function<List<DataSource>, StepResult> step,
                           Consumer<IntConsumer> eachReplica, GradientSync between,
                           DataSource data, Checkpoints checkpoints, Optional<String> resume, RunConfig config,
                           Consumer<StepResult> onStep) {
        Trainer first = trainers.get(0);
        TrainConfig cfg = first.config();
        resume.ifPresent(name -> {
            Checkpoints.State state = null;
            for (Trainer t : trainers) {
                state = checkpoints.restore(name, t);
            }
            seek(checkpoints, name, state, data, between.rank(), between.world(), trainers.size(), "workers");
        });
        int parts = trainers.size();
        while (first.stepCount() < cfg.maxSteps()) {
            TokenBatch[][] split = new TokenBatch[parts][cfg.gradAccum()];
            for (int micro = 0; micro < cfg.gradAccum(); micro++) {
                TokenBatch[] pieces = data.next().split(parts);
                for (int r = 0; r < parts; r++) {
                    split[r][micro] = pieces[r];
                }
            }
            List<DataSource> sources = new ArrayList<>();
            for (TokenBatch[] own : split) {
                sources.add(DataSource.indexed(p -> own[(int) p]));
            }
            StepResult r = step.apply(sources);
            onStep.accept(r);
            boolean interval = cfg.checkpointInterval() > 0 && r.step() % cfg.checkpointInterval() == 0;
            if (interval || r.step() == cfg.maxSteps()) {
                // Under zero 1 the optimizer's shards meet at rank 0 first: the checkpoint holds them all.
                eachReplica.accept(rank -> trainers.get(rank).gatherOptimizerState());
                long[] positions = between.allGather(data.position());
                if (between.rank() == 0) {
                    checkpoints.save(first, config, cfg.keepCheckpoints(), parts, positions);
                }
            }
        }
        return first.stepCount();
    }
}
