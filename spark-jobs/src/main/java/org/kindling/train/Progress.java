package org.kindling.train;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.TreeMap;
import java.util.function.Consumer;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.train.StepResult;

/**
 * The driver's view of a run: rank 0's step results as they arrive. Every {@code log_interval}
 * steps, and after each evaluation, it prints a progress line (step, loss, tokens/s, ETA, then the named metrics:
 * the layers' and {@code eval_loss}) and
 * brings {@code metrics.jsonl} up to date (the same metrics as extra fields): the lines of earlier runs before this one's first step, then this run's. The file is
 * written whole once, then appended to, so a run writes each line about once. A retried stage
 * re-sends the steps after its checkpoint; they replace the ones the failed attempt sent, and when
 * those were already written the file is rewritten whole. File systems that cannot append (S3A)
 * get the whole file every time. A failing write is logged and retried at the next interval:
 * metrics never stop training. The same steps go to TensorBoard's events file ({@link TensorBoardEvents}) at the same
 * flushes.
 */
final class Progress implements Consumer<StepResult> {
    private static final System.Logger LOG = System.getLogger(Progress.class.getName());
    static final String METRICS = RunDir.METRICS;
    private static final Pattern STEP = Pattern.compile("^\\{\"step\":(\\d+),");

    private final HadoopRunStorage storage;
    private final TrainConfig cfg;
    private final Consumer<String> lines;
    private final TreeMap<Integer, String> earlier = new TreeMap<>();
    private final TreeMap<Integer, StepResult> steps = new TreeMap<>();
    private final StepFile metrics;
    private final TensorBoardEvents events;

    Progress(HadoopRunStorage storage, TrainConfig cfg) throws IOException {
        this(storage, cfg, line -> LOG.log(System.Logger.Level.INFO, line));
    }

    /** With the progress lines going to {@code lines} instead of the log (a notebook's output, say). */
    Progress(HadoopRunStorage storage, TrainConfig cfg, Consumer<String> lines) throws IOException {
        this.storage = storage;
        this.cfg = cfg;
        this.lines = lines;
        this.metrics = new StepFile(storage, METRICS, METRICS + ".tmp", true);
        this.events = new TensorBoardEvents(storage, System.currentTimeMillis(), TensorBoardEvents.host());
        if (storage.exists(METRICS)) {
            try (InputStream in = storage.open(METRICS)) {
                for (String line : new String(in.readAllBytes(), StandardCharsets.UTF_8).split("\n")) {
                    Matcher m = STEP.matcher(line);
                    if (m.find()) {
                        earlier.put(Integer.parseInt(m.group(1)), line);
                    }
                }
            }
        }
    }

    @Override
    public synchronized void accept(StepResult r) {
        metrics.arrived(r.step());
        steps.tailMap(r.step(), true).clear();
        steps.put(r.step(), r);
        events.accept(r);
        // An evaluated step shows its eval loss even off the log interval.
        if (r.step() % cfg.logInterval() == 0 || r.step() == cfg.maxSteps() || r.metrics().containsKey(StepResult.EVAL_LOSS)) {
            lines.accept(line(r));
            flush();
        }
    }

    /** The progress line of step {@code r}: the fixed fields, then each layer metric as {@code | name value}. */
    String line(StepResult r) {
        // ETA from the mean step time of the last (up to) 20 steps.
        List<StepResult> recent = new ArrayList<>(steps.headMap(r.step(), true).descendingMap().values());
        double s = 0;
        int n = Math.min(20, recent.size());
        for (int i = 0; i < n; i++) {
            s += recent.get(i).seconds();
        }
        long eta = Math.round(s / n * (cfg.maxSteps() - r.step()));
        return String.format(Locale.ROOT, "step %d/%d | loss %.4f | lr %.3e | grad-norm %.4f | %,.0f tokens/s | ETA %dm%02ds",
                r.step(), cfg.maxSteps(), r.loss(), r.lr(), r.gradNorm(), r.tokensPerSecond(), eta / 60, eta % 60) + r.metricsText();
    }

    /** Brings metrics.jsonl and the events file up to date with what has arrived; a failure is logged, never thrown. */
    synchronized void flush() {
        flushMetrics();
        events.flush();
    }

    private void flushMetrics() {
        metrics.flush(steps.isEmpty() ? 0 : steps.lastKey(), new StepFile.Contents() {
            @Override
            public byte[] after(int step) {
                StringBuilder sb = new StringBuilder();
                for (StepResult r : steps.tailMap(step, false).values()) {
                    sb.append(metricsLine(r)).append('\n');
                }
                return sb.toString().getBytes(StandardCharsets.UTF_8);
            }

            @Override
            public byte[] whole() {
                StringBuilder sb = new StringBuilder();
                for (Map.Entry<Integer, String> e : earlier.headMap(steps.firstKey()).entrySet()) {
                    sb.append(e.getValue()).append('\n');
                }
                for (StepResult r : steps.values()) {
                    sb.append(metricsLine(r)).append('\n');
                }
                return sb.toString().getBytes(StandardCharsets.UTF_8);
            }
        });
    }

    /** The events file, relative to the run directory. */
    String eventsFile() {
        return events.file();
    }

    /** The steps this run has trained, in order. */
    synchronized List<StepResult> thisRun() {
        return List.copyOf(steps.values());
    }

    /** A metrics.jsonl line: the fixed fields, then each layer metric by name (NaN and ±∞ as null: JSON has no such numbers). */
    static String metricsLine(StepResult r) {
        StringBuilder sb = new StringBuilder(String.format(Locale.ROOT,
                "{\"step\":%d,\"loss\":%.6f,\"lr\":%.6e,\"grad_norm\":%.6f,\"tokens_per_s\":%.1f",
                r.step(), r.loss(), r.lr(), r.gradNorm(), r.tokensPerSecond()));
        r.metrics().forEach((name, value) -> sb.append(",\"").append(name).append("\":")
                .append(Double.isFinite(value) ? String.format(Locale.ROOT, "%.6g", value) : "null"));
        return sb.append('}').toString();
    }
}
