package org.kindling.report;

import java.awt.BasicStroke;
import java.awt.Color;
import java.awt.image.BufferedImage;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Base64;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.knowm.xchart.BitmapEncoder;
import org.knowm.xchart.VectorGraphicsEncoder;
import org.knowm.xchart.XYChart;
import org.knowm.xchart.XYChartBuilder;
import org.knowm.xchart.XYSeries;
import org.knowm.xchart.style.Styler;
import org.knowm.xchart.style.XYStyler;
import org.knowm.xchart.style.markers.SeriesMarkers;

/**
 * Charts and an HTML page for one or more training runs, from their {@code metrics.jsonl}: training
 * loss (with {@code eval_loss} on the same chart where a run logs it), learning rate, gradient norm,
 * tokens/s, and every other metric a run logs (layer metrics such as {@code moe_balance_loss}).
 * Each chart has one series per run, so runs compare on one chart.
 *
 * <p>From a notebook: {@code RunReport.read(conf, "/runs/a", "/runs/b").image("loss")} is the loss
 * plot as an image; {@link #chart} gives the XChart chart to restyle. {@link #write} writes the page
 * {@code report.html} and each chart as {@code NAME.png} and {@code NAME.svg}; the page embeds the
 * SVGs as {@code data:} URIs, so it works offline and on its own.
 */
public final class RunReport {
    static {
        // Charts render without a display (servers, executors, notebooks' kernels).
        if (System.getProperty("java.awt.headless") == null) {
            System.setProperty("java.awt.headless", "true");
        }
    }

    /** The page's file name in the output directory. */
    public static final String HTML = "report.html";
    /** The training loss chart (with eval loss). */
    public static final String LOSS = "loss";
    /** The eval loss field: drawn on the loss chart, not a chart of its own. */
    public static final String EVAL_LOSS = "eval_loss";
    private static final int WIDTH = 900;
    private static final int HEIGHT = 420;
    private static final Map<String, String> TITLES = Map.of(LOSS, "Loss", "lr", "Learning rate", "grad_norm",
            "Gradient norm (before clipping)", "tokens_per_s", "Throughput (tokens/s)");
    private static final Color[] COLORS = {new Color(0x1f77b4), new Color(0xd62728), new Color(0x2ca02c), new Color(0xff7f0e),
        new Color(0x9467bd), new Color(0x8c564b), new Color(0xe377c2), new Color(0x7f7f7f), new Color(0xbcbd22), new Color(0x17becf)};

    private final List<RunMetrics> runs;

    private RunReport(List<RunMetrics> runs) {
        this.runs = runs;
    }

    /**
     * A report over runs already read; the first is the run the report is about, the others compare
     * with it. Runs whose names repeat are named by their location instead.
     */
    public static RunReport of(List<RunMetrics> runs) {
        if (runs.isEmpty()) {
            throw new IllegalArgumentException("a report needs at least one run");
        }
        Map<String, Integer> counts = new HashMap<>();
        runs.forEach(r -> counts.merge(r.name(), 1, Integer::sum));
        List<RunMetrics> named = new ArrayList<>();
        Set<String> seen = new LinkedHashSet<>();
        for (RunMetrics r : runs) {
            RunMetrics n = counts.get(r.name()) > 1 ? r.named(r.location()) : r;
            if (!seen.add(n.name())) {
                throw new IllegalArgumentException("run " + n.location() + " is given twice");
            }
            named.add(n);
        }
        return new RunReport(List.copyOf(named));
    }

    /** Reads each run directory (any Hadoop path) and reports on them, the first compared with the others. */
    public static RunReport read(Configuration conf, String... runDirs) throws IOException {
        List<RunMetrics> runs = new ArrayList<>();
        for (String dir : runDirs) {
            runs.add(RunMetrics.read(dir, conf));
        }
        return of(runs);
    }

    public List<RunMetrics> runs() {
        return runs;
    }

    /**
     * The charts this report draws, by name: {@code loss}, {@code lr}, {@code grad_norm},
     * {@code tokens_per_s}, then every other field some run logs, by name ({@code eval_loss} is on
     * {@code loss}). A name is also the chart's file name.
     */
    public List<String> charts() {
        Set<String> out = new LinkedHashSet<>();
        for (RunMetrics r : runs) {
            for (String f : r.fields()) {
                out.add(f.equals(EVAL_LOSS) ? LOSS : f);
            }
        }
        return List.copyOf(out);
    }

    /** The chart's title. */
    public static String title(String chart) {
        return TITLES.getOrDefault(chart, chart);
    }

    /**
     * The chart {@code name} (one of {@link #charts}): one line per run over the steps, named by the
     * run ({@code RUN eval} for eval loss); the step axis spans the data (from 0 when the
     * first step is within the first tenth), the value axis the data padded by 5 %.
     */
    public XYChart chart(String name) {
        if (!charts().contains(name)) {
            throw new IllegalArgumentException("no chart " + name + "; this report has " + charts());
        }
        XYChart chart = new XYChartBuilder().width(WIDTH).height(HEIGHT).title(title(name)).xAxisTitle("step")
                .yAxisTitle(name.equals(LOSS) ? "loss (nats/token)" : name).build();
        XYStyler s = chart.getStyler();
        s.setChartBackgroundColor(Color.WHITE);
        s.setLegendPosition(Styler.LegendPosition.InsideNE);
        s.setLegendBackgroundColor(new Color(255, 255, 255, 220));
        s.setChartTitleBoxVisible(false);
        s.setPlotBorderVisible(false);
        s.setXAxisDecimalPattern("#,###");
        // XChart puts ticks on the data's own steps when they are equally spaced (every log_interval): often more than
        // fit side by side, so the labels stand at an angle.
        s.setXAxisLabelRotation(45);
        if (name.equals("lr")) {
            s.setYAxisDecimalPattern("0.0##E0");
        }
        double xMin = Double.POSITIVE_INFINITY;
        double xMax = Double.NEGATIVE_INFINITY;
        double yMin = Double.POSITIVE_INFINITY;
        double yMax = Double.NEGATIVE_INFINITY;
        List<String> fields = name.equals(LOSS) ? List.of(LOSS, EVAL_LOSS) : List.of(name);
        for (int i = 0; i < runs.size(); i++) {
            RunMetrics r = runs.get(i);
            for (String f : fields) {
                if (!r.has(f)) {
                    continue;
                }
                int[] steps = r.steps(f);
                double[] x = new double[steps.length];
                for (int j = 0; j < x.length; j++) {
                    x[j] = steps[j];
                }
                double[] y = r.values(f);
                XYSeries series = chart.addSeries(f.equals(EVAL_LOSS) ? r.name() + " eval" : r.name(), x, y);
                series.setLineColor(COLORS[i % COLORS.length]);
                series.setMarkerColor(COLORS[i % COLORS.length]);
                if (f.equals(EVAL_LOSS)) {
                    // Eval points are few: marked, and dashed so they read apart from training loss in the run's colour.
                    series.setMarker(SeriesMarkers.CIRCLE);
                    series.setLineStyle(new BasicStroke(2f, BasicStroke.CAP_BUTT, BasicStroke.JOIN_MITER, 10f, new float[] {6f, 4f}, 0f));
                } else {
                    series.setMarker(SeriesMarkers.NONE);
                    series.setLineStyle(new BasicStroke(1.6f));
                }
                for (int j = 0; j < x.length; j++) {
                    xMin = Math.min(xMin, x[j]);
                    xMax = Math.max(xMax, x[j]);
                    yMin = Math.min(yMin, y[j]);
                    yMax = Math.max(yMax, y[j]);
                }
            }
        }
        if (xMin == xMax) {
            xMin -= 1;
            xMax += 1;
        } else if (xMin > 0 && xMin <= 0.1 * xMax) {
            // Runs from (near) the start: an axis from 0 gets round step ticks (0, 50, 100) instead of 1, 15, 29.
            xMin = 0;
        }
        double pad = yMax > yMin ? (yMax - yMin) * 0.05 : (yMax != 0 ? Math.abs(yMax) * 0.05 : 1);
        s.setXAxisMin(xMin);
        s.setXAxisMax(xMax);
        s.setYAxisMin(yMin - pad);
        s.setYAxisMax(yMax + pad);
        return chart;
    }

    /** The chart {@code name} drawn as an image (for a notebook to show inline). */
    public BufferedImage image(String name) {
        return BitmapEncoder.getBufferedImage(chart(name));
    }

    /** The chart {@code name} as PNG bytes. */
    public byte[] png(String name) throws IOException {
        return BitmapEncoder.getBitmapBytes(chart(name), BitmapEncoder.BitmapFormat.PNG);
    }

    /** The chart {@code name} as an SVG document (XChart draws its text as outlines, so it looks the same everywhere). */
    public String svg(String name) throws IOException {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        VectorGraphicsEncoder.saveVectorGraphic(chart(name), out, VectorGraphicsEncoder.VectorGraphicsFormat.SVG);
        return out.toString(StandardCharsets.UTF_8);
    }

    /**
     * What {@link #write} wrote.
     *
     * @param html the page, fully qualified
     * @param files every file written, fully qualified: the page, then each chart's PNG and SVG
     * @param charts the charts drawn, in page order
     */
    public record Written(String html, List<String> files, List<String> charts) {
    }

    /**
     * Writes {@code report.html} and each chart's {@code .png} and {@code .svg} into {@code outDir}
     * (any Hadoop path; created when missing, files there of the same names replaced).
     */
    public Written write(String outDir, Configuration conf) throws IOException {
        Path dir = new Path(outDir);
        // A private instance: the cached one is shared with the rest of the JVM, and switching its checksums off would
        // change what training writes; for a page people open, .crc files beside each chart are clutter.
        try (FileSystem fs = FileSystem.newInstance(dir.toUri(), conf)) {
            fs.setWriteChecksum(false);
            Path root = fs.makeQualified(dir);
            List<String> files = new ArrayList<>();
            files.add(new Path(root, HTML).toString());
            Map<String, String> svgs = new LinkedHashMap<>();
            for (String c : charts()) {
                String svg = svg(c);
                svgs.put(c, svg);
                files.add(writeFile(fs, root, c + ".png", png(c)));
                files.add(writeFile(fs, root, c + ".svg", svg.getBytes(StandardCharsets.UTF_8)));
            }
            writeFile(fs, root, HTML, html(svgs).getBytes(StandardCharsets.UTF_8));
            return new Written(files.get(0), List.copyOf(files), List.copyOf(svgs.keySet()));
        }
    }

    private static String writeFile(FileSystem fs, Path dir, String name, byte[] bytes) throws IOException {
        Path p = new Path(dir, name);
        try (OutputStream o = fs.create(p, true)) {
            o.write(bytes);
        }
        return p.toString();
    }

    /** The page: a header table of the runs, then each chart (its SVG inline as a data: URI) with links to its files. */
    String html(Map<String, String> svgs) {
        StringBuilder h = new StringBuilder();
        String title = "Kindling report: " + String.join(" vs ", runs.stream().map(RunMetrics::name).toList());
        h.append("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>").append(esc(title))
                .append("</title>\n<style>\n")
                .append("body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:960px;color:#222;padding:0 1em}\n")
                .append("h1{font-size:1.5em;margin-bottom:.2em}\n.sub{color:#666;margin-top:0}\n")
                .append("table{border-collapse:collapse;margin:1em 0;font-size:.92em}\n")
                .append("th,td{border-bottom:1px solid #ddd;padding:.35em .7em;text-align:left;vertical-align:top}\n")
                .append("td.num{text-align:right;font-variant-numeric:tabular-nums}\n")
                .append(".swatch{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin-right:.4em}\n")
                .append(".cfg{color:#444;font-size:.9em}\nfigure{margin:1.5em 0}\nfigure img{width:100%;height:auto;border:1px solid #eee}\n")
                .append("figcaption{font-size:.9em;color:#555}\n</style>\n</head>\n<body>\n");
        h.append("<h1>").append(esc(title)).append("</h1>\n<p class=\"sub\">").append(runs.size() == 1 ? "1 run" : runs.size() + " runs")
                .append(", ").append(svgs.size()).append(" charts</p>\n");
        boolean anyEval = runs.stream().anyMatch(r -> r.has(EVAL_LOSS));
        h.append("<table>\n<tr><th>run</th><th>steps</th><th>final loss</th><th>best loss (step)</th>");
        if (anyEval) {
            h.append("<th>final eval loss</th><th>best eval loss (step)</th>");
        }
        h.append("<th>median tokens/s</th><th>config</th></tr>\n");
        for (int i = 0; i < runs.size(); i++) {
            RunMetrics r = runs.get(i);
            Color c = COLORS[i % COLORS.length];
            h.append("<tr><td><span class=\"swatch\" style=\"background:#").append(String.format(Locale.ROOT, "%06x", c.getRGB() & 0xffffff))
                    .append("\"></span><b>").append(esc(r.name())).append("</b><br><span class=\"cfg\">").append(esc(r.location()))
                    .append("</span></td>");
            h.append("<td class=\"num\">").append(String.format(Locale.ROOT, "%,d", r.lastStep())).append("</td>");
            h.append(lossCells(r, LOSS));
            if (anyEval) {
                h.append(lossCells(r, EVAL_LOSS));
            }
            h.append("<td class=\"num\">").append(r.has("tokens_per_s") ? String.format(Locale.ROOT, "%,.0f", r.median("tokens_per_s")) : "—")
                    .append("</td><td class=\"cfg\">");
            List<String> cfg = r.configSummary();
            h.append(cfg.isEmpty() ? "no " + RunMetrics.CONFIG : esc(String.join(", ", cfg))).append("</td></tr>\n");
        }
        h.append("</table>\n");
        for (Map.Entry<String, String> e : svgs.entrySet()) {
            String c = e.getKey();
            h.append("<figure id=\"").append(c).append("\">\n<img alt=\"").append(esc(title(c))).append("\" src=\"data:image/svg+xml;base64,")
                    .append(Base64.getEncoder().encodeToString(e.getValue().getBytes(StandardCharsets.UTF_8))).append("\">\n")
                    .append("<figcaption>").append(esc(title(c))).append(" — <a href=\"").append(c).append(".png\">PNG</a> · <a href=\"")
                    .append(c).append(".svg\">SVG</a></figcaption>\n</figure>\n");
        }
        return h.append("</body>\n</html>\n").toString();
    }

    private static String lossCells(RunMetrics r, String field) {
        if (!r.has(field)) {
            return "<td class=\"num\">—</td><td class=\"num\">—</td>";
        }
        return String.format(Locale.ROOT, "<td class=\"num\">%.4f</td><td class=\"num\">%.4f (%,d)</td>", r.last(field), r.best(field),
                r.bestStep(field));
    }

    private static String esc(String s) {
        return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\"", "&quot;");
    }
}
