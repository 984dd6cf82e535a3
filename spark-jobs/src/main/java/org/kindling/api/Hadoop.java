package org.kindling.api;

import org.apache.hadoop.conf.Configuration;
import org.apache.spark.sql.SparkSession;
import scala.Option;

/** The Hadoop configuration builders reach runs and datasets with unless given one. */
final class Hadoop {
    private Hadoop() {
    }

    /**
     * The caller's Spark session's (its {@code spark.hadoop.*} settings: credentials, mount tables),
     * so a run that training wrote is read back the same way; a new one where no session exists (the CLI).
     */
    static Configuration sessionOrNew() {
        Option<SparkSession> session = SparkSession.getActiveSession();
        if (session.isEmpty()) {
            session = SparkSession.getDefaultSession();
        }
        return session.isDefined() ? session.get().sparkContext().hadoopConfiguration() : new Configuration();
    }
}
