package org.kindling.train;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.TreeMap;
import java.util.function.Consumer;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.kindling.models.StepResult;
import org.kindling.models.TrainConfig;

/**
 * The driver's view of a run: rank 0's step results as they arrive. Every {@code log_interval}
 * steps it prints a progress line (step, loss, tokens/s, ETA) and rewrites {@code metrics.jsonl}
 * (the lines of earlier runs before this one's first step, then this run's). A retried stage
 * re-sends the steps after its checkpoint; they replace the ones the failed attempt sent.
 */
final class Progress implements Consumer<StepResult> {
    private static final System.Logger LOG = System.getLogger(Progress.class.getName());
    private static final Pattern STEP = Pattern.compile("^\\{\"step\":(\\d+),");

    private final HadoopRunStorage storage;
    private final TrainConfig cfg;
    private final TreeMap<Integer, String> earlier = new TreeMap<>();
    private final TreeMap<Integer, StepResult> steps = new TreeMap<>();

    Progress(HadoopRunStorage storage, TrainConfig cfg) throws IOException {
        this.storage = storage;
        this.cfg = cfg;
        if (storage.exists("metrics.jsonl")) {
            try (InputStream in = storage.open("metrics.jsonl")) {
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
        steps.tailMap(r.step(), true).clear();
        steps.put(r.step(), r);
        if (r.step() % cfg.logInterval() == 0 || r.step() == cfg.maxSteps()) {
            LOG.log(System.Logger.Level.INFO, line(r));
            flush();
        }
    }

    private String line(StepResult r) {
        // ETA from the mean step time of the last (up to) 20 steps.
        List<StepResult> recent = new ArrayList<>(steps.headMap(r.step(), true).descendingMap().values());
        double s = 0;
        int n = Math.min(20, recent.size());
        for (int i = 0; i < n; i++) {
            s += recent.get(i).seconds();
        }
        long eta = Math.round(s / n * (cfg.maxSteps() - r.step()));
        return String.format(Locale.ROOT, "step %d/%d | loss %.4f | lr %.3e | grad-norm %.4f | %,.0f tokens/s | ETA %dm%02ds",
                r.step(), cfg.maxSteps(), r.loss(), r.lr(), r.gradNorm(), r.tokensPerSecond(), eta / 60, eta % 60);
    }

    /** Rewrites metrics.jsonl with what has arrived. */
    synchronized void flush() {
        if (steps.isEmpty()) {
            return;
        }
        StringBuilder sb = new StringBuilder();
        for (Map.Entry<Integer, String> e : earlier.headMap(steps.firstKey()).entrySet()) {
            sb.append(e.getValue()).append('\n');
        }
        for (StepResult r : steps.values()) {
            sb.append(metricsLine(r)).append('\n');
        }
        try {
            try (OutputStream out = storage.create("metrics.jsonl.tmp")) {
                out.write(sb.toString().getBytes(StandardCharsets.UTF_8));
            }
            storage.replace("metrics.jsonl.tmp", "metrics.jsonl");
        } catch (IOException e) {
            throw new UncheckedIOException("cannot write " + storage.describe("metrics.jsonl") + ": " + e.getMessage(), e);
        }
    }

    /** The steps this run has trained, in order. */
    synchronized List<StepResult> thisRun() {
        return List.copyOf(steps.values());
    }

    static String metricsLine(StepResult r) {
        return String.format(Locale.ROOT, "{\"step\":%d,\"loss\":%.6f,\"lr\":%.6e,\"grad_norm\":%.6f,\"tokens_per_s\":%.1f}",
                r.step(), r.loss(), r.lr(), r.gradNorm(), r.tokensPerSecond());
    }
}
