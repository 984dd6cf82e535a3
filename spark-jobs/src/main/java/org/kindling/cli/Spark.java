package org.kindling.cli;

import org.apache.spark.SparkConf;
import org.apache.spark.sql.SparkSession;

/** The SparkSession of a command: the spark-submit master if there is one, else --master, else local[*]. */
final class Spark {
    private Spark() {
    }

    static SparkSession session(String appName, String master) {
        return session(appName, master, java.util.Map.of());
    }

    /** Executor environment variable that caps OpenBLAS's own thread pool. */
    static final String EXECUTOR_OPENBLAS = "spark.executorEnv.OPENBLAS_NUM_THREADS";

    /** With extra Spark settings ({@code --conf key=value}), applied before the session starts. */
    static SparkSession session(String appName, String master, java.util.Map<String, String> conf) {
        SparkSession.Builder builder = SparkSession.builder().appName(appName);
        // Each task splits GEMMs across its own spark.task.cpus threads; a multithreaded OpenBLAS underneath would
        // oversubscribe the executor's cores. Executors inherit the environment of their worker, not of bin/kindling.
        if (!conf.containsKey(EXECUTOR_OPENBLAS) && !new SparkConf().contains(EXECUTOR_OPENBLAS)) {
            builder.config(EXECUTOR_OPENBLAS, "1");
        }
        conf.forEach(builder::config);
        if (master != null || !new SparkConf().contains("spark.master")) {
            builder.master(master != null ? master : "local[*]");
        }
        return builder.getOrCreate();
    }
}
