package org.kindling.models.train;

import java.util.Map;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.nn.Params;

/**
 * The update a {@link Trainer} applies once the step's gradients are summed over every worker: the
 * same on every replica, so replicas stay bit-identical. Owns its state tensors.
 */
public interface Optimizer extends AutoCloseable {

    /** The optimizer {@code cfg.optimizer()} names, over {@code params}. */
    static Optimizer create(Params params, TrainConfig cfg) {
        return cfg.optimizer().isMfac() ? new MfacOptimizer(params, cfg) : new AdamWOptimizer(params, cfg);
    }

    /**
     * Updates {@code params}' values from their gradients (each multiplied by {@code gradScale}, the
     * clipping factor) at learning rate {@code lr} (times each group's multiplier).
     *
     * @param step optimizer steps taken before this one
     */
    void step(Params params, int step, float lr, float gradScale);

    /**
     * The state a checkpoint saves, by tensor name; a restore writes into these same pieces and then
     * calls {@link #restored}. Asking for this brings any state the optimizer keeps elsewhere into them first.
     */
    Map<String, StateTensor> state();

    /** After a restore wrote {@link #state()}'s tensors: reloads what the optimizer keeps off the device. */
    void restored();

    /** Bytes of device memory the optimizer's state and scratch hold. */
    long memoryBytes();

    /** One line for the run's log: the optimizer, its settings and its memory. */
    String describe();

    @Override
    void close();
}
