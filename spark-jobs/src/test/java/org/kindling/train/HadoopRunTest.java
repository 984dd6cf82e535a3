package org.kindling.train;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hdfs.MiniDFSCluster;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.kindling.data.DatasetReader;
import org.kindling.data.PrepareJob;
import org.kindling.data.PrepareOptions;
import org.kindling.models.Gpt;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.RunConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.Synthetic;
import org.kindling.models.io.Checkpoints;
import org.kindling.models.train.StepResult;
import org.kindling.models.train.TrainLoop;
import org.kindling.models.train.Trainer;
import org.kindling.ops.Device;
import org.kindling.ops.cpu.CpuDevice;

/** Run directories and datasets on an in-process MiniDFSCluster: checkpoints, LATEST, resume, and training from shards. */
class HadoopRunTest {
    static MiniDFSCluster cluster;
    static String hdfs;
    static Configuration conf;
    @TempDir
    static Path base;

    static final ModelConfig MODEL = ModelConfig.gpt(20, 32, 2, 4, 2, 64, 4, 0, 0.02, 1e-5);
    static final TrainConfig TRAIN = new TrainConfig(3, 3e-3, 3e-4, 2, 6, 0.1, 0.9, 0.95, 1e-8, 1.0, 1, 512, 2, 2, 2);

    @BeforeAll
    static void start() throws IOException {
        conf = new Configuration();
        cluster = new MiniDFSCluster.Builder(conf, base.toFile()).numDataNodes(1).build();
        cluster.waitActive();
        hdfs = cluster.getURI().toString();
    }

    @AfterAll
    static void stop() {
        cluster.shutdown();
    }

    private static DataSource data() {
        return Synthetic.source(Synthetic.associativeRecall(20, 32, 200, 5), 8);
    }

    @Test
    void checkpointsOnHdfsRotateAndResumeBitIdentically() throws IOException {
        float[] straight;
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(MODEL, dev, 3); Trainer t = new Trainer(model, TRAIN)) {
            DataSource d = data();
            for (int i = 0; i < 6; i++) {
                t.step(d);
            }
            straight = model.params().values().toFloatArray();
        }
        Checkpoints ckpt = new Checkpoints(new HadoopRunStorage(hdfs + "/runs/r1", conf));
        // The first attempt stops after 4 of its 6 steps (as if its executor died).
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(MODEL, dev, 3); Trainer t = new Trainer(model, TRAIN)) {
            DataSource d = data();
            for (int i = 0; i < 4; i++) {
                t.step(d);
                if (t.stepCount() % 2 == 0) {
                    ckpt.save(t, new RunConfig(MODEL, TRAIN), 2, d.position());
                }
            }
        }
        assertEquals(List.of(2, 4), ckpt.steps());
        assertEquals("step-4", ckpt.latest().orElseThrow());
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(MODEL, dev, 99); Trainer t = new Trainer(model, TRAIN)) {
            assertEquals(6, TrainLoop.run(t, data(), ckpt, new RunConfig(MODEL, TRAIN), r -> { }));
            assertArrayEquals(straight, model.params().values().toFloatArray());
        }
        assertEquals(List.of(4, 6), ckpt.steps(), "keep 2");
        assertEquals("step-6", ckpt.latest().orElseThrow());
    }

    @Test
    void trainsFromAPreparedDatasetOnHdfs() throws IOException {
        try (OutputStream out = cluster.getFileSystem().create(new org.apache.hadoop.fs.Path("/corpus/a.txt"))) {
            out.write("the cat sat on the mat. the dog sat on the log.\n".repeat(200).getBytes(StandardCharsets.UTF_8));
        }
        SparkSession spark = SparkSession.builder().master("local[2]").appName("hdfs-train").config("spark.ui.enabled", "false")
                .getOrCreate();
        try {
            PrepareJob.run(spark, new PrepareOptions(List.of(hdfs + "/corpus"), hdfs + "/datasets/cats", null, true, "text", null, 300,
                    64, null, false, 1 << 20, false));
        } finally {
            spark.stop();
        }
        ModelConfig cfg = ModelConfig.gpt(300, 32, 1, 2, 2, 64, 4, 0, 0.02, 1e-5);
        List<Double> losses = new ArrayList<>();
        long position;
        try (Device dev = CpuDevice.open(2); Gpt model = new Gpt(cfg, dev, 1); Trainer t = new Trainer(model, TRAIN);
             DatasetSource source = new DatasetSource(new DatasetReader(hdfs + "/datasets/cats", conf, 1, 0, 1, 256))) {
            for (int i = 0; i < 6; i++) {
                StepResult r = t.step(source);
                losses.add(r.loss());
            }
            position = source.position();
        }
        assertTrue(losses.get(5) < losses.get(0), "training on the shards lowers the loss: " + losses);
        try (DatasetSource again = new DatasetSource(new DatasetReader(hdfs + "/datasets/cats", conf, 1, 0, 1, 256))) {
            again.seek(position);
            assertTrue(again.next().size() > 0);
        }
    }
}
