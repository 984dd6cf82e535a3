package org.kindling.models.train;

import java.util.Optional;
import java.util.function.Consumer;
import org.kindling.models.config.RunConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
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
        TrainConfig cfg = trainer.config();
        GradientSync sync = trainer.sync();
        resume.ifPresent(name -> {
            Checkpoints.State state = checkpoints.restore(name, trainer);
            if (state.dataPositions().length != sync.world()) {
                throw new IllegalStateException(checkpoints.storage().describe("checkpoints/" + name) + " was written by "
                        + state.dataPositions().length + " worker(s); resume it with the same number of workers, not "
                        + sync.world());
            }
            data.seek(state.dataPositions()[sync.rank()]);
            LOG.log(System.Logger.Level.INFO, "resumed from " + checkpoints.storage().describe("checkpoints/" + name));
        });
        while (trainer.stepCount() < cfg.maxSteps()) {
            StepResult r = trainer.step(data);
            onStep.accept(r);
            boolean interval = cfg.checkpointInterval() > 0 && r.step() % cfg.checkpointInterval() == 0;
            if (interval || r.step() == cfg.maxSteps()) {
                long[] positions = sync.allGather(data.position());
                if (sync.rank() == 0) {
                    checkpoints.save(trainer, config, cfg.keepCheckpoints(), positions);
                }
            }
        }
        return trainer.stepCount();
    }
}
