package org.kindling.train;

import java.util.Optional;
import org.apache.spark.ExceptionFailure;
import org.apache.spark.SparkContext;
import org.apache.spark.scheduler.SparkListenerTaskEnd;

/**
 * Cancels a training job as soon as one of its tasks fails with a {@link CorruptInputException}:
 * Spark would otherwise retry the whole barrier stage, which reads the same file and fails again,
 * before the error reaches the user.
 */
final class CorruptInputs extends JobGroupListener {
    private final SparkContext sc;
    private volatile String cause;

    CorruptInputs(String group, SparkContext sc) {
        super(group);
        this.sc = sc;
    }

    @Override
    public void onTaskEnd(SparkListenerTaskEnd end) {
        if (cause == null && ours(end.stageId()) && end.reason() instanceof ExceptionFailure f
                && f.className().equals(CorruptInputException.class.getName())) {
            cause = f.description();
            sc.cancelJobGroup(group, "a corrupt input fails every attempt alike: " + cause);
        }
    }

    /** The corrupt input's error, once a task has reported one. */
    Optional<String> cause() {
        return Optional.ofNullable(cause);
    }
}
