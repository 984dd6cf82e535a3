package org.kindling.models;

import java.util.function.Consumer;

/**
 * The single-process training loop: resumes from the run's LATEST checkpoint if there is one,
 * steps until {@code max_steps}, logs every {@code log_interval} steps, and checkpoints every
 * {@code checkpoint_interval} steps and at the end. Distributed training wraps the same pieces.
 */
public final class TrainLoop {
    private static final System.Logger LOG = System.getLogger(TrainLoop.class.getName());

    private TrainLoop() {
    }

    /**
     * @param onStep sees every step's result (progress display, metrics files)
     * @return the step the run ended at
     */
    public static int run(Trainer trainer, DataSource data, Checkpoints checkpoints, RunConfig config,
                          Consumer<StepResult> onStep) {
        TrainConfig cfg = trainer.config();
        checkpoints.latest().ifPresent(name -> {
            Checkpoints.State state = checkpoints.restore(name, trainer);
            data.seek(state.dataPosition());
            LOG.log(System.Logger.Level.INFO, "resumed from " + checkpoints.storage().describe("checkpoints/" + name));
        });
        while (trainer.stepCount() < cfg.maxSteps()) {
            StepResult r = trainer.step(data);
            onStep.accept(r);
            if (r.step() % cfg.logInterval() == 0 || r.step() == cfg.maxSteps()) {
                LOG.log(System.Logger.Level.INFO, r.logLine());
            }
            boolean interval = cfg.checkpointInterval() > 0 && r.step() % cfg.checkpointInterval() == 0;
            if (interval || r.step() == cfg.maxSteps()) {
                checkpoints.save(trainer, data.position(), config, cfg.keepCheckpoints());
            }
        }
        return trainer.stepCount();
    }
}
