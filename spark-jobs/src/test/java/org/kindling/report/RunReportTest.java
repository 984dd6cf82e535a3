package org.kindling.report;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.awt.image.BufferedImage;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Base64;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.hadoop.conf.Configuration;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.knowm.xchart.XYChart;
import org.knowm.xchart.XYSeries;

/** Charts and the page hold the runs' data: points per series, axis ranges, one series per run, offline HTML. */
class RunReportTest {
    private static final Configuration CONF = new Configuration();

    @TempDir
    Path dir;

    /** A run directory with {@code lines} as metrics.jsonl (each with its newline) and a small config.yaml. */
    private Path run(String name, String... lines) throws Exception {
        Path run = dir.resolve(name);
        Files.createDirectories(run);
        Files.writeString(run.resolve("metrics.jsonl"), String.join("\n", lines) + "\n");
        Files.writeString(run.resolve("config.yaml"), "---\nvocab: 1024\nd_model: 64\nn_layer: 2\nmixer:\n- \"attention\"\n- \"attention\"\n"
                + "train:\n  lr: 0.003\n  max_steps: 450\n");
        return run;
    }

    private static String line(int step, double loss, double lr, double gradNorm, double tps, String extra) {
        return String.format(java.util.Locale.ROOT, "{\"step\":%d,\"loss\":%.6f,\"lr\":%.6e,\"grad_norm\":%.6f,\"tokens_per_s\":%.1f%s}",
                step, loss, lr, gradNorm, tps, extra);
    }

    private Path moeRun() throws Exception {
        return run("moe",
                line(1, 6.9, 1e-4, 0.84, 1549.4, ",\"moe_balance_loss\":1.02"),
                line(2, 6.5, 2e-4, 0.80, 10047.1, ",\"moe_balance_loss\":1.01"),
                line(3, 6.1, 3e-4, 0.75, 18955.9, ",\"moe_balance_loss\":null"),
                line(4, 5.8, 4e-4, 0.70, 19001.0, ",\"moe_balance_loss\":1.00,\"eval_loss\":5.95"),
                line(5, 5.6, 3e-4, 0.66, 18800.5, ",\"moe_balance_loss\":0.99"));
    }

    @Test
    void chartsHoldEveryLoggedPointWithinTheirAxes() throws Exception {
        RunReport report = RunReport.read(CONF, moeRun().toString());
        assertEquals(List.of("loss", "lr", "grad_norm", "tokens_per_s", "moe_balance_loss"), report.charts(),
                "eval_loss goes on the loss chart");
        XYChart loss = report.chart("loss");
        assertEquals(List.of("moe", "moe eval"), List.copyOf(loss.getSeriesMap().keySet()));
        assertEquals(5, loss.getSeriesMap().get("moe").getXData().length);
        assertEquals(1, loss.getSeriesMap().get("moe eval").getXData().length);
        XYChart balance = report.chart("moe_balance_loss");
        XYSeries s = balance.getSeriesMap().get("moe");
        assertEquals(4, s.getXData().length, "the null (NaN at training time) is left out");
        assertEquals(List.of(1.0, 2.0, 4.0, 5.0), Arrays.stream(s.getXData()).boxed().toList());
        assertEquals(List.of(1.02, 1.01, 1.00, 0.99), Arrays.stream(s.getYData()).boxed().toList());
        assertAxesCover(loss, 1, 5, 5.6, 6.9);
        assertAxesCover(report.chart("tokens_per_s"), 1, 5, 1549.4, 19001.0);
        assertAxesCover(balance, 1, 5, 0.99, 1.02);
        Path late = run("late", line(200, 3.0, 1e-4, 0.5, 10, ""), line(250, 2.9, 1e-4, 0.5, 10, ""));
        assertAxesCover(RunReport.read(CONF, late.toString()).chart("loss"), 200, 250, 2.9, 3.0);
        BufferedImage img = report.image("loss");
        assertTrue(img.getWidth() >= 600 && img.getHeight() >= 300, img.getWidth() + "x" + img.getHeight());
    }

    private static void assertAxesCover(XYChart chart, double xMin, double xMax, double yMin, double yMax) {
        var st = chart.getStyler();
        assertEquals(xMin <= 0.1 * xMax ? 0 : xMin, st.getXAxisMin(), 1e-9, chart.getTitle() + ": from 0 when the run starts near it");
        assertEquals(xMax, st.getXAxisMax(), 1e-9, chart.getTitle());
        assertTrue(st.getYAxisMin() <= yMin && st.getYAxisMin() > yMin - 0.1 * (yMax - yMin), chart.getTitle() + " y min " + st.getYAxisMin());
        assertTrue(st.getYAxisMax() >= yMax && st.getYAxisMax() < yMax + 0.1 * (yMax - yMin), chart.getTitle() + " y max " + st.getYAxisMax());
    }

    @Test
    void comparedRunsAreOneSeriesEachAndTheirNamesStayApart() throws Exception {
        Path a = moeRun();
        Path b = run("dense", line(1, 7.0, 1e-4, 0.9, 1000, ""), line(2, 6.0, 2e-4, 0.8, 2000, ""), line(3, 5.0, 3e-4, 0.7, 3000, ""));
        RunReport report = RunReport.read(CONF, a.toString(), b.toString());
        XYChart lr = report.chart("lr");
        assertEquals(List.of("moe", "dense"), List.copyOf(lr.getSeriesMap().keySet()));
        assertEquals(3, lr.getSeriesMap().get("dense").getXData().length);
        assertAxesCover(report.chart("loss"), 1, 5, 5.0, 7.0);
        assertEquals(List.of("moe"), List.copyOf(report.chart("moe_balance_loss").getSeriesMap().keySet()),
                "a metric only one run logs has that run's series alone");

        Path other = dir.resolve("elsewhere");
        Files.createDirectories(other);
        Path twin = Files.move(run("tmp", line(1, 3.0, 1e-4, 0.5, 10, "")), other.resolve("moe"));
        RunReport twins = RunReport.read(CONF, a.toString(), twin.toString());
        List<String> names = List.copyOf(twins.chart("loss").getSeriesMap().keySet());
        assertTrue(names.get(0).endsWith(a.toString()) && names.get(2).endsWith(twin.toString()), names.toString());
        IllegalArgumentException twice = assertThrows(IllegalArgumentException.class, () -> RunReport.read(CONF, a.toString(), a.toString()));
        assertTrue(twice.getMessage().contains("given twice"), twice.getMessage());
    }

    @Test
    void writesPageAndFilesThatCarryTheData() throws Exception {
        Path a = moeRun();
        Path b = run("dense", line(1, 7.0, 1e-4, 0.9, 1000, ""), line(2, 6.0, 2e-4, 0.8, 2000, ""), line(3, 5.0, 3e-4, 0.7, 3000, ""));
        Path out = dir.resolve("out");
        RunReport.Written w = RunReport.read(CONF, a.toString(), b.toString()).write(out.toString(), CONF);
        assertEquals(List.of("loss", "lr", "grad_norm", "tokens_per_s", "moe_balance_loss"), w.charts());
        assertEquals(1 + 2 * 5, w.files().size());
        try (var listing = Files.list(out)) {
            assertEquals(11, listing.count(), "the page and the charts, no checksum files beside them");
        }
        String html = Files.readString(out.resolve("report.html"));
        assertFalse(html.contains("http://") || html.contains("https://"), "the page works offline");
        Matcher src = Pattern.compile("(?:src|href)=\"([^\"]*)\"").matcher(html);
        List<String> embedded = new ArrayList<>();
        while (src.find()) {
            String ref = src.group(1);
            if (ref.startsWith("data:image/svg+xml;base64,")) {
                embedded.add(new String(Base64.getDecoder().decode(ref.substring(26)), StandardCharsets.UTF_8));
            } else {
                assertTrue(ref.matches("[a-z0-9_]+\\.(png|svg)") && Files.exists(out.resolve(ref)), "a link to a written file: " + ref);
            }
        }
        assertEquals(5, embedded.size());
        for (int i = 0; i < w.charts().size(); i++) {
            String c = w.charts().get(i);
            assertEquals(Files.readString(out.resolve(c + ".svg")), embedded.get(i), c + ": the page embeds the written SVG");
            BufferedImage png = javax.imageio.ImageIO.read(out.resolve(c + ".png").toFile());
            assertTrue(png.getWidth() >= 600, c);
        }
        // XChart draws a series as line segments in the run's colour, each starting where the last ended; the legend's
        // swatch is one more segment of two points (moe's loss chart has two: training and eval loss).
        String moe = "rgb(31,119,180)";
        String dense = "rgb(214,39,40)";
        String lossSvg = Files.readString(out.resolve("loss.svg"));
        assertEquals(2, count(lossSvg, "<ellipse"), "moe's one eval point is marked, in the chart and the legend");
        List<List<double[]>> moeLoss = polylines(lossSvg, moe);
        assertEquals(List.of(5, 2, 2), moeLoss.stream().map(List::size).toList());
        assertEquals(List.of(3, 2), polylines(lossSvg, dense).stream().map(List::size).toList());
        assertEquals(List.of(5, 2), polylines(Files.readString(out.resolve("lr.svg")), moe).stream().map(List::size).toList());
        assertEquals(List.of(4, 2), polylines(Files.readString(out.resolve("moe_balance_loss.svg")), moe).stream().map(List::size).toList());
        assertEquals(List.of(), polylines(Files.readString(out.resolve("moe_balance_loss.svg")), dense), "dense logs no balance loss");
        List<double[]> line = moeLoss.get(0);
        for (int i = 1; i < line.size(); i++) {
            assertTrue(line.get(i)[0] > line.get(i - 1)[0] && line.get(i)[1] > line.get(i - 1)[1],
                    "steps go right and the falling loss goes down the page");
            assertEquals(line.get(1)[0] - line.get(0)[0], line.get(i)[0] - line.get(i - 1)[0], 1e-6, "steps 1..5 are evenly spaced");
        }
        assertTrue(html.contains("<b>moe</b>") && html.contains("<b>dense</b>"), "run names in the header");
        assertTrue(html.contains("5.6000") && html.contains("5.0000"), "final losses in the header");
        assertTrue(html.contains("5.9500"), "the eval loss in the header");
        assertTrue(html.contains("18,801"), "the median tokens/s of moe (1549, 10047, 18801, 18956, 19001)");
        assertTrue(html.contains("mixer: attention ×2") && html.contains("max_steps: 450"), "config summary in the header");
    }

    private static int count(String s, String part) {
        return (s.length() - s.replace(part, "").length()) / part.length();
    }

    /** The polylines an SVG draws in {@code color} (an SVG {@code rgb(…)}): runs of {@code <line>} segments joined end to start. */
    static List<List<double[]>> polylines(String svg, String color) {
        List<List<double[]>> out = new ArrayList<>();
        Matcher m = Pattern.compile("<line style=\"[^\"]*stroke:" + Pattern.quote(color)
                + ";[^\"]*\" x1=\"([^\"]+)\" x2=\"([^\"]+)\" y1=\"([^\"]+)\" y2=\"([^\"]+)\"/>").matcher(svg);
        List<double[]> current = null;
        while (m.find()) {
            double[] from = {Double.parseDouble(m.group(1)), Double.parseDouble(m.group(3))};
            double[] to = {Double.parseDouble(m.group(2)), Double.parseDouble(m.group(4))};
            double[] end = current == null ? null : current.get(current.size() - 1);
            if (end == null || end[0] != from[0] || end[1] != from[1]) {
                current = new ArrayList<>();
                current.add(from);
                out.add(current);
            }
            current.add(to);
        }
        return out;
    }

    @Test
    void badMetricsNameTheFileAndLine() throws Exception {
        Path cut = run("cut", line(1, 6.9, 1e-4, 0.8, 100, ""), line(2, 6.5, 2e-4, 0.8, 100, ""));
        Files.writeString(cut.resolve("metrics.jsonl"), "{\"step\":3,\"loss\":6.", java.nio.file.StandardOpenOption.APPEND);
        RunMetrics m = RunMetrics.read(cut.toString(), CONF);
        assertEquals(2, m.lastStep(), "a last line cut short is skipped");

        Path corrupt = run("corrupt", line(1, 6.9, 1e-4, 0.8, 100, ""), "{\"step\":2,\"loss\":", line(3, 6.5, 2e-4, 0.8, 100, ""));
        assertMessage(corrupt, "metrics.jsonl line 2 is not valid JSON");
        assertMessage(run("text", line(1, 6.9, 1e-4, 0.8, 100, ",\"moe_balance_loss\":\"high\"")),
                "metrics.jsonl line 1: field moe_balance_loss must be a number or null");
        assertMessage(run("nostep", "{\"loss\":1.0}"), "metrics.jsonl line 1: field step must be a positive integer");
        assertMessage(run("badname", line(1, 6.9, 1e-4, 0.8, 100, ",\"Bad-Name\":1")), "metrics.jsonl line 1: metric name 'Bad-Name'");
        assertMessage(run("array", "[1,2]"), "metrics.jsonl line 1 is not a JSON object");
        Path long1 = run("long", "{\"step\":1,\"loss\":" + "1".repeat(RunMetrics.MAX_LINE) + "}");
        assertMessage(long1, "metrics.jsonl line 1 is longer than");
        Path empty = dir.resolve("empty");
        Files.createDirectories(empty);
        assertMessage(empty, "metrics.jsonl is missing");
        Files.writeString(empty.resolve("metrics.jsonl"), "");
        assertMessage(empty, "metrics.jsonl has no steps");
    }

    private static void assertMessage(Path run, String expected) {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> RunReport.read(CONF, run.toString()));
        assertTrue(e.getMessage().contains(expected) && e.getMessage().contains(run.getFileName().toString()), e.getMessage());
    }
}
