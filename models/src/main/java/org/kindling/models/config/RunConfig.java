package org.kindling.models.config;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.dataformat.yaml.YAMLFactory;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;

/** A whole config file: the model keys at the top level and an optional {@code train} section. */
public record RunConfig(ModelConfig model, TrainConfig train) {
    private static final ObjectMapper YAML = new ObjectMapper(new YAMLFactory());

    public static RunConfig load(Path file) {
        return load(file, Map.of());
    }

    /**
     * Reads a config file with {@code key=value} overrides applied first: a key of the {@code train}
     * section (lr, max_steps, …), a model key (n_layer, vocab, …), or a dotted path into a nested
     * one ({@code mixer.d_state}, {@code mixer.1.type}, {@code train.lr}). Values are YAML scalars and
     * are validated like the file's.
     */
    public static RunConfig load(Path file, Map<String, String> overrides) {
        String text;
        try {
            text = Files.readString(file);
        } catch (IOException e) {
            throw new IllegalArgumentException("cannot read config " + file + ": " + e.getMessage(), e);
        }
        Map<String, Object> root = parseYaml(text, file.toString());
        if (!overrides.isEmpty()) {
            root = Overrides.apply(root, overrides, TrainConfig.defaults(1).toMap().keySet());
        }
        return fromMap(root, file.toString());
    }

    /** Parses YAML text; {@code source} names it in errors. */
    public static RunConfig parse(String text, String source) {
        return fromMap(parseYaml(text, source), source);
    }

    /** Builds a config from an already parsed mapping (as {@link #toMap} writes it). */
    public static RunConfig fromMap(Map<String, Object> root, String source) {
        ConfigReader r = new ConfigReader(source, "", root);
        ModelConfig model = ModelConfig.read(r);
        ConfigReader t = new ConfigReader(source, "train", r.section("train"));
        TrainConfig train = TrainConfig.read(t);
        String refusal = train.recompute().refusal(model);
        if (refusal != null) {
            throw t.error("recompute", refusal);
        }
        r.finish();
        t.finish();
        return new RunConfig(model, train);
    }

    /** A YAML scalar as a config value (an integer, a number, a boolean or a string), as --set reads it. */
    public static Object scalar(String text, String source) {
        return parseYaml("v: " + text, source).get("v");
    }

    @SuppressWarnings("unchecked")
    static Map<String, Object> parseYaml(String text, String source) {
        Object root;
        try {
            root = YAML.readValue(text, Object.class);
        } catch (IOException e) {
            throw new IllegalArgumentException(source + ": not valid YAML: " + e.getMessage(), e);
        }
        if (!(root instanceof Map<?, ?>)) {
            throw new IllegalArgumentException(source + ": expected a mapping of config keys, got "
                    + (root == null ? "an empty file" : root.getClass().getSimpleName()));
        }
        return (Map<String, Object>) root;
    }

    /** The resolved config as YAML that {@link #parse} reads back. */
    public String toYaml() {
        try {
            return YAML.writeValueAsString(toMap());
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
    }

    /** The resolved config, every default filled in. */
    public Map<String, Object> toMap() {
        Map<String, Object> m = model.toMap();
        m.put("train", train.toMap());
        return m;
    }
}
