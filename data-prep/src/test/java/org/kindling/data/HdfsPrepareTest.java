package org.kindling.data;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.hdfs.MiniDFSCluster;
import org.apache.spark.sql.SparkSession;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The prepare job and the training reader against HDFS: an in-process MiniDFSCluster, hdfs:// paths throughout. */
class HdfsPrepareTest {
    static MiniDFSCluster cluster;
    static SparkSession spark;
    static String hdfs;
    static Configuration conf;
    @TempDir
    static Path base;

    @BeforeAll
    static void start() throws IOException {
        conf = new Configuration();
        cluster = new MiniDFSCluster.Builder(conf, base.toFile()).numDataNodes(1).build();
        cluster.waitActive();
        hdfs = cluster.getURI().toString();
        spark = SparkSession.builder().master("local[2]").appName("hdfs-test").config("spark.ui.enabled", "false").getOrCreate();
        FileSystem fs = cluster.getFileSystem();
        write(fs, "/corpus/a.txt", "First document on HDFS, with émoji 🎉.\nSecond line of the same document.");
        write(fs, "/corpus/b.jsonl", "{\"text\": \"a JSON document\"}\n{\"text\": \"\"}\n");
    }

    private static void write(FileSystem fs, String path, String text) throws IOException {
        try (OutputStream out = fs.create(new org.apache.hadoop.fs.Path(path))) {
            out.write(text.getBytes(StandardCharsets.UTF_8));
        }
    }

    @AfterAll
    static void stop() {
        spark.stop();
        cluster.shutdown();
    }

    @Test
    void preparesFromAndToHdfsAndTheReaderReadsItBack() throws IOException {
        String out = hdfs + "/datasets/first";
        PrepareJob.Result r = PrepareJob.run(spark, new PrepareOptions(List.of(hdfs + "/corpus"), out, null, false, "text", null, 300,
                128, null, false, 1 << 20, false));
        assertEquals(2, r.documents());
        assertEquals(1L, r.rejects().get("empty"));
        FileSystem fs = cluster.getFileSystem();
        assertTrue(fs.exists(new org.apache.hadoop.fs.Path(out + "/manifest.json")));
        BpeTokenizer tok;
        try (InputStream in = fs.open(new org.apache.hadoop.fs.Path(out + "/tokenizer.json"))) {
            tok = BpeTokenizer.fromJson(new String(in.readAllBytes(), StandardCharsets.UTF_8), "tokenizer.json");
        }
        List<String> texts = new ArrayList<>();
        try (DatasetReader reader = new DatasetReader(out, conf, 1, 0, 1, 128)) {
            for (int i = 0; i < 2; i++) {
                DatasetReader.Batch b = reader.next();
                for (int s = 0; s < b.sequences(); s++) {
                    int[] ids = java.util.Arrays.copyOfRange(b.tokens(), b.cuSeqlens()[s], b.cuSeqlens()[s + 1] - 1);
                    texts.add(tok.decode(ids));
                }
            }
        }
        assertTrue(texts.contains("First document on HDFS, with émoji 🎉.\nSecond line of the same document."), texts.toString());
        assertTrue(texts.contains("a JSON document"), texts.toString());
    }
}
