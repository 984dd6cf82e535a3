package org.kindling.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.Map;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.Test;

/** The commands' Spark session: executors run OpenBLAS single-threaded unless the user chose otherwise. */
class SparkTest {
    private static String executorOpenBlas(Map<String, String> conf) {
        SparkSession spark = Spark.session("spark-test", "local[1]", conf);
        try {
            return spark.sparkContext().executorEnvs().get("OPENBLAS_NUM_THREADS").get();
        } finally {
            spark.stop();
        }
    }

    @Test
    void executorsGetOneOpenBlasThreadUnlessTheUserSetsIt() {
        assertEquals("1", executorOpenBlas(Map.of("spark.ui.enabled", "false")));
        assertEquals("4", executorOpenBlas(Map.of("spark.ui.enabled", "false", Spark.EXECUTOR_OPENBLAS, "4")));
    }
}
