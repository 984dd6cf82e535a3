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

    /** With extra Spark settings ({@code --conf key=value}), applied before the session starts. */
    static SparkSession session(String appName, String master, java.util.Map<String, String> conf) {
        SparkSession.Builder builder = SparkSession.builder().appName(appName);
        conf.forEach(builder::config);
        if (master != null || !new SparkConf().contains("spark.master")) {
            builder.master(master != null ? master : "local[*]");
        }
        return builder.getOrCreate();
    }
}
