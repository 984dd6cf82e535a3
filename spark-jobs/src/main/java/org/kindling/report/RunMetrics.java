package org.kindling.report;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.Reader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.Iterator;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import org.apache.hadoop.conf.Configuration;
import org.kindling.models.train.StepResult;
import org.kindling.train.HadoopRunStorage;

/**
 * A training run's {@code metrics.jsonl} (one JSON object per logged step: {@code step}, {@code loss},
 * {@code lr}, {@code grad_norm}, {@code tokens_per_s}, then the layers' named metrics, and
 * {@code eval_loss} where a run logs one) and its {@code config.yaml}, as columns by field name.
 *
 * <p>A line that is not such an object is an error naming the file and line, except a last line
 * without its newline: a write cut short, skipped with a warning as training's own reader does.
 * A null value (a NaN or infinity at training time) leaves that step out of that field's column.
 * When a step appears twice, the later line wins (a resumed run's).
 */
public final class RunMetrics {
    private static final System.Logger LOG = System.getLogger(RunMetrics.class.getName());
    /** The file every training run appends its logged steps to. */
    public static final String METRICS = "metrics.jsonl";
    /** The run's resolved config, written by training. */
    public static final String CONFIG = "config.yaml";
    /** The longest metrics line read: 64 metrics of 64-character names fit many times over. */
    static final int MAX_LINE = 1 << 16;
    /** The largest config.yaml read. */
    static final int MAX_CONFIG = 1 << 20;
    /** The fields every line has (besides {@code step}), in chart order. */
    static final List<String> FIXED = List.of("loss", "lr", "grad_norm", "tokens_per_s");
    private static final ObjectMapper JSON = new ObjectMapper();

    private final String name;
    private final String location;
    private final TreeMap<String, TreeMap<Integer, Double>> columns;
    private final int lastStep;
    private final Map<String, Object> config;

    private RunMetrics(String name, String location, TreeMap<String, TreeMap<Integer, Double>> columns, int lastStep,
                       Map<String, Object> config) {
        this.name = name;
        this.location = location;
        this.columns = columns;
        this.lastStep = lastStep;
        this.config = config;
    }

    /**
     * Reads a run directory on any Hadoop file system: its {@code metrics.jsonl} (required) and its
     * {@code config.yaml} (an empty config when absent). The run is named by its directory's name.
     */
    public static RunMetrics read(String run, Configuration conf) throws IOException {
        HadoopRunStorage storage = new HadoopRunStorage(run, conf);
        if (!storage.exists(METRICS)) {
            throw new IllegalArgumentException(storage.describe(METRICS) + " is missing: " + run
                    + " is not a training run directory, or it has not logged a step yet");
        }
        Map<String, Object> config = Map.of();
        if (storage.exists(CONFIG)) {
            try (InputStream in = storage.open(CONFIG)) {
                config = parseConfig(in.readNBytes(MAX_CONFIG + 1), storage.describe(CONFIG));
            }
        }
        String root = storage.root();
        String dirName = new org.apache.hadoop.fs.Path(root).getName();
        try (InputStream in = storage.open(METRICS)) {
            return parse(dirName.isEmpty() ? root : dirName, root, in, storage.describe(METRICS), config);
        }
    }

    /**
     * Parses a {@code metrics.jsonl} stream.
     *
     * @param name the run's name in charts and tables
     * @param location where the run lives, for the report's header
     * @param source the file's name in error messages
     * @param config the run's config (nested maps as in config.yaml), shown in the header
     */
    public static RunMetrics parse(String name, String location, InputStream in, String source, Map<String, Object> config)
            throws IOException {
        TreeMap<Integer, ObjectNode> rows = new TreeMap<>();
        Reader reader = new InputStreamReader(in, StandardCharsets.UTF_8);
        StringBuilder line = new StringBuilder();
        int lineNo = 0;
        boolean eof = false;
        while (!eof) {
            line.setLength(0);
            int c;
            while ((c = reader.read()) != -1 && c != '\n') {
                if (line.length() == MAX_LINE) {
                    throw new IllegalArgumentException(source + " line " + (lineNo + 1) + " is longer than " + MAX_LINE
                            + " characters: not a metrics line");
                }
                line.append((char) c);
            }
            eof = c == -1;
            if (eof && line.length() == 0) {
                break;
            }
            lineNo++;
            if (line.toString().isBlank()) {
                continue;
            }
            try {
                ObjectNode row = row(line.toString(), source, lineNo);
                rows.put(row.get("step").intValue(), row);
            } catch (JsonProcessingException e) {
                if (eof) {
                    LOG.log(System.Logger.Level.WARNING, source + " line " + lineNo
                            + " ends without a newline and is not complete JSON (a write cut short): skipped");
                } else {
                    throw new IllegalArgumentException(source + " line " + lineNo + " is not valid JSON: "
                            + e.getOriginalMessage(), e);
                }
            }
        }
        if (rows.isEmpty()) {
            throw new IllegalArgumentException(source + " has no steps");
        }
        TreeMap<String, TreeMap<Integer, Double>> columns = new TreeMap<>();
        for (Map.Entry<Integer, ObjectNode> r : rows.entrySet()) {
            Iterator<Map.Entry<String, JsonNode>> fields = r.getValue().fields();
            while (fields.hasNext()) {
                Map.Entry<String, JsonNode> f = fields.next();
                if (!f.getKey().equals("step") && f.getValue().isNumber()) {
                    columns.computeIfAbsent(f.getKey(), k -> new TreeMap<>()).put(r.getKey(), f.getValue().doubleValue());
                }
            }
        }
        return new RunMetrics(name, location, columns, rows.lastKey(), config);
    }

    /** One line as an object with a positive integer step and numeric or null fields of valid names. */
    private static ObjectNode row(String line, String source, int lineNo) throws JsonProcessingException {
        JsonNode node = JSON.readTree(line);
        String at = source + " line " + lineNo;
        if (!(node instanceof ObjectNode obj)) {
            throw new IllegalArgumentException(at + " is not a JSON object");
        }
        JsonNode step = obj.get("step");
        if (step == null || !step.isIntegralNumber() || !step.canConvertToInt() || step.intValue() < 1) {
            throw new IllegalArgumentException(at + ": field step must be a positive integer, got " + step);
        }
        Iterator<Map.Entry<String, JsonNode>> fields = obj.fields();
        while (fields.hasNext()) {
            Map.Entry<String, JsonNode> f = fields.next();
            if (f.getKey().equals("step")) {
                continue;
            }
            if (!f.getValue().isNumber() && !f.getValue().isNull()) {
                throw new IllegalArgumentException(at + ": field " + f.getKey() + " must be a number or null, got " + f.getValue());
            }
            if (!FIXED.contains(f.getKey())) {
                try {
                    StepResult.checkName(f.getKey());
                } catch (IllegalArgumentException e) {
                    throw new IllegalArgumentException(at + ": " + e.getMessage(), e);
                }
            }
        }
        return obj;
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> parseConfig(byte[] bytes, String source) throws IOException {
        if (bytes.length > MAX_CONFIG) {
            throw new IllegalArgumentException(source + " is larger than " + MAX_CONFIG + " bytes: not a run config");
        }
        Object parsed;
        try {
            parsed = new ObjectMapper(new com.fasterxml.jackson.dataformat.yaml.YAMLFactory()).readValue(bytes, Object.class);
        } catch (JsonProcessingException e) {
            throw new IllegalArgumentException(source + " is not valid YAML: " + e.getOriginalMessage(), e);
        }
        if (!(parsed instanceof Map<?, ?> map)) {
            throw new IllegalArgumentException(source + " is not a YAML mapping");
        }
        return (Map<String, Object>) map;
    }

    /** The run's name: its directory's name unless the report renamed it. */
    public String name() {
        return name;
    }

    /** The run directory, fully qualified. */
    public String location() {
        return location;
    }

    /** A copy named {@code newName} (the report renames runs whose directories share a name). */
    RunMetrics named(String newName) {
        return new RunMetrics(newName, location, columns, lastStep, config);
    }

    /** The fields with at least one value: the fixed ones first in {@link #FIXED} order, then the others by name. */
    public List<String> fields() {
        Set<String> out = new LinkedHashSet<>();
        for (String f : FIXED) {
            if (columns.containsKey(f)) {
                out.add(f);
            }
        }
        out.addAll(columns.keySet());
        return List.copyOf(out);
    }

    /** Whether {@code field} has a value at some step. */
    public boolean has(String field) {
        return columns.containsKey(field);
    }

    /** The steps at which {@code field} has a value, ascending (empty when it has none). */
    public int[] steps(String field) {
        TreeMap<Integer, Double> col = columns.getOrDefault(field, new TreeMap<>());
        return col.keySet().stream().mapToInt(Integer::intValue).toArray();
    }

    /** The values of {@code field}, in the order of {@link #steps}. */
    public double[] values(String field) {
        TreeMap<Integer, Double> col = columns.getOrDefault(field, new TreeMap<>());
        return col.values().stream().mapToDouble(Double::doubleValue).toArray();
    }

    /** The last step logged. */
    public int lastStep() {
        return lastStep;
    }

    /** The last value of {@code field}, or NaN when it has none. */
    public double last(String field) {
        TreeMap<Integer, Double> col = columns.get(field);
        return col == null ? Double.NaN : col.lastEntry().getValue();
    }

    /** The step of the smallest value of {@code field} (the first such step), or 0 when it has none. */
    public int bestStep(String field) {
        TreeMap<Integer, Double> col = columns.get(field);
        if (col == null) {
            return 0;
        }
        int best = col.firstKey();
        for (Map.Entry<Integer, Double> e : col.entrySet()) {
            if (e.getValue() < col.get(best)) {
                best = e.getKey();
            }
        }
        return best;
    }

    /** The smallest value of {@code field}, or NaN when it has none. */
    public double best(String field) {
        int step = bestStep(field);
        return step == 0 ? Double.NaN : columns.get(field).get(step);
    }

    /** The median of {@code field}'s values (the mean of the middle two for an even count), or NaN when it has none. */
    public double median(String field) {
        double[] v = values(field);
        if (v.length == 0) {
            return Double.NaN;
        }
        Arrays.sort(v);
        int m = v.length / 2;
        return v.length % 2 == 1 ? v[m] : (v[m - 1] + v[m]) / 2;
    }

    /** The run's config.yaml as nested maps (empty when the run has none). */
    public Map<String, Object> config() {
        return Collections.unmodifiableMap(config);
    }

    /**
     * The config keys a reader compares runs by, as {@code key: value} pairs (those present): the
     * model's shape and mixers, then the training budget.
     */
    public List<String> configSummary() {
        List<String> out = new ArrayList<>();
        for (String k : List.of("vocab", "d_model", "n_layer", "n_head", "max_seq", "mixer", "channel_mixer")) {
            if (config.containsKey(k)) {
                out.add(k + ": " + compact(config.get(k)));
            }
        }
        if (config.get("train") instanceof Map<?, ?> train) {
            for (String k : List.of("lr", "max_steps", "batch_tokens", "warmup_steps", "weight_decay")) {
                if (train.containsKey(k)) {
                    out.add(k + ": " + compact(train.get(k)));
                }
            }
        }
        return out;
    }

    /** A list of equal entries as one entry with its count ({@code attention ×2}), else the value as YAML would show it. */
    private static String compact(Object v) {
        if (v instanceof List<?> list && !list.isEmpty() && list.stream().allMatch(list.get(0)::equals)) {
            return list.get(0) + " ×" + list.size();
        }
        return String.valueOf(v);
    }
}
