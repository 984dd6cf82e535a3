package org.kindling.notebook;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The kernel under real Jupyter: {@code bin/kindling notebook --install-only} installs the spec into a
 * private Jupyter data dir, then {@code jupyter nbconvert --execute} runs notebooks on it. Needs
 * Debian's jupyter-notebook and jupyter-nbconvert.
 */
class NotebookKernelIT {
    @TempDir
    static Path jupyterHome;
    private static Map<String, String> env;

    @BeforeAll
    static void installKernel() throws Exception {
        env = Map.of("JUPYTER_DATA_DIR", jupyterHome.resolve("data").toString(),
                "JUPYTER_CONFIG_DIR", jupyterHome.resolve("config").toString(),
                "JUPYTER_RUNTIME_DIR", jupyterHome.resolve("runtime").toString(),
                "JUPYTER_PATH", jupyterHome.resolve("data").toString());
        Notebooks.run(List.of(Notebooks.ROOT.resolve("bin/kindling").toString(), "notebook", "--install-only"), env, 300);
        assertTrue(Files.exists(jupyterHome.resolve("data/kernels/kindling/kernel.json")));
    }

    @Test
    void smokeNotebookPrintsDisplaysFailsAndRunsSpark(@TempDir Path dir) throws Exception {
        Path nb = dir.resolve("smoke.ipynb");
        Notebooks.write(nb, List.of(
                Notebooks.codeCell("System.out.println(\"hello from \" + \"kindling\");\nint x = 6 * 7;\nx", false),
                Notebooks.codeCell("throw new IllegalStateException(\"expected failure\");", true),
                Notebooks.codeCell("int y = \"text\";", true),
                Notebooks.codeCell("""
                        var img = new java.awt.image.BufferedImage(8, 8, java.awt.image.BufferedImage.TYPE_INT_RGB);
                        Display.png(img);
                        Display.svg("<svg xmlns='http://www.w3.org/2000/svg' width='8' height='8'><rect width='8' height='8'/></svg>");
                        Display.html("<b>bold</b>");
                        var chart = new org.knowm.xchart.XYChartBuilder().width(200).height(120).build();
                        chart.addSeries("loss", new double[] {1, 2, 3}, new double[] {3, 2, 1});
                        Display.chart(chart);""", false),
                Notebooks.codeCell("""
                        var spark = org.apache.spark.sql.SparkSession.builder().master("local[2]").appName("smoke")
                            .config("spark.ui.enabled", "false").getOrCreate();
                        System.out.println("count=" + spark.range(10).count());
                        spark.stop();""", false)));
        Path out = dir.resolve("out");
        JsonNode cells = Notebooks.execute(nb, out, env).get("cells");

        assertEquals("hello from kindling\n", text(cells.get(0), "stream"));
        assertEquals("42", joined(output(cells.get(0), "execute_result").get("data").get("text/plain")));

        JsonNode thrown = output(cells.get(1), "error");
        assertEquals("java.lang.IllegalStateException: expected failure", thrown.get("evalue").asText());
        JsonNode compile = output(cells.get(2), "error");
        assertTrue(compile.get("evalue").asText().contains("incompatible types"), compile.toString());

        List<String> mimes = new ArrayList<>();
        for (JsonNode o : cells.get(3).get("outputs")) {
            assertEquals("display_data", o.get("output_type").asText(), o.toString());
            o.get("data").fieldNames().forEachRemaining(m -> {
                if (!m.equals("text/plain")) {
                    mimes.add(m);
                }
            });
        }
        assertEquals(List.of("image/png", "image/svg+xml", "text/html", "image/png"), mimes);

        assertTrue(text(cells.get(4), "stream").contains("count=10"), cells.get(4).toString());
    }

    /** Jupyter's interrupt (an interrupt_request, as kernel.json asks) ends a sleeping cell and a busy one. */
    @Test
    void interruptEndsTheRunningCellAndTheKernelGoesOn() throws Exception {
        Path script = Path.of(NotebookKernelIT.class.getResource("interrupt_check.py").toURI());
        List<String> cmd = new ArrayList<>(Notebooks.jupyterPython());
        cmd.add(script.toString());
        String out = Notebooks.run(cmd, env, 300);
        assertTrue(out.contains("sleep: error java.lang.InterruptedException: sleep interrupted"), out);
        assertTrue(out.contains("busy: error java.lang.InterruptedException: the cell was interrupted"), out);
        assertTrue(out.contains("after: ok"), out);
    }

    @Test
    void everyCommittedNotebookRunsTopToBottom(@TempDir Path out) throws Exception {
        List<Path> notebooks = Notebooks.committed();
        assertFalse(notebooks.isEmpty(), "no notebooks under " + Notebooks.ROOT.resolve("notebooks"));
        for (Path nb : notebooks) {
            JsonNode executed = Notebooks.execute(nb, out, env);
            String outputs = executed.path("cells").toString();
            assertTrue(outputs.contains("image/png"), nb + " showed no chart");
            if (nb.getFileName().toString().equals("quickstart.ipynb")) {
                assertTrue(outputs.contains("eval_loss") && outputs.contains("held-out loss"), nb + ": " + outputs);
            }
        }
    }

    private static JsonNode output(JsonNode cell, String type) {
        for (JsonNode o : cell.get("outputs")) {
            if (o.get("output_type").asText().equals(type)) {
                return o;
            }
        }
        throw new AssertionError("no " + type + " output in " + cell);
    }

    private static String text(JsonNode cell, String type) {
        return joined(output(cell, type).get("text"));
    }

    /** nbformat stores multi-line text as a list of lines or as one string. */
    private static String joined(JsonNode text) {
        if (text.isArray()) {
            StringBuilder s = new StringBuilder();
            text.forEach(line -> s.append(line.asText()));
            return s.toString();
        }
        return text.asText();
    }
}
