package org.kindling.train;

import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import org.apache.spark.scheduler.SparkListener;
import org.apache.spark.scheduler.SparkListenerJobStart;

/** A Spark listener that knows which stages belong to the jobs of one job group (one training run). */
abstract class JobGroupListener extends SparkListener {
    final String group;
    private final Set<Integer> stages = ConcurrentHashMap.newKeySet();

    JobGroupListener(String group) {
        this.group = group;
    }

    @Override
    public void onJobStart(SparkListenerJobStart job) {
        if (job.properties() != null && group.equals(job.properties().getProperty("spark.jobGroup.id"))) {
            scala.jdk.javaapi.CollectionConverters.asJava(job.stageIds()).forEach(id -> stages.add((Integer) id));
        }
    }

    /** Whether stage {@code stageId} belongs to the group's jobs. */
    boolean ours(int stageId) {
        return stages.contains(stageId);
    }
}
