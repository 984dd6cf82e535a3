package org.kindling.models.config;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * Typed access to one section of a YAML config, with errors that name the file and the key.
 * Every key read is remembered; {@link #finish()} rejects the keys nobody asked for.
 */
public final class ConfigReader {
    private final String source;
    private final String prefix;
    private final Map<String, Object> values;
    private final Set<String> known = new LinkedHashSet<>();

    public ConfigReader(String source, String prefix, Map<String, Object> values) {
        this.source = source;
        this.prefix = prefix;
        this.values = values == null ? Map.of() : values;
    }

    private String key(String k) {
        return prefix.isEmpty() ? k : prefix + "." + k;
    }

    /** Prefixes a validation error with the file it came from. */
    public IllegalArgumentException invalid(IllegalArgumentException e) {
        return new IllegalArgumentException(source + ": " + e.getMessage(), e);
    }

    public IllegalArgumentException error(String key, String message) {
        return new IllegalArgumentException(source + ": " + key(key) + " " + message);
    }

    private Object raw(String k) {
        known.add(k);
        return values.get(k);
    }

    public boolean has(String k) {
        known.add(k);
        return values.containsKey(k);
    }

    public int integer(String k, Integer dflt) {
        Object v = raw(k);
        if (v == null) {
            return required(k, dflt);
        }
        if (v instanceof Integer i) {
            return i;
        }
        if (v instanceof Long l && l == l.intValue()) {
            return l.intValue();
        }
        throw error(k, "must be an integer, got " + describe(v));
    }

    public double number(String k, Double dflt) {
        Object v = raw(k);
        if (v == null) {
            return required(k, dflt);
        }
        if (v instanceof Number n) {
            return n.doubleValue();
        }
        if (v instanceof String s) {
            try {
                return Double.parseDouble(s.trim()); // YAML 1.1 reads "1e-3" as a string
            } catch (NumberFormatException e) {
                // fall through to the error below
            }
        }
        throw error(k, "must be a number, got " + describe(v));
    }

    public boolean bool(String k, boolean dflt) {
        Object v = raw(k);
        if (v == null) {
            return dflt;
        }
        if (v instanceof Boolean b) {
            return b;
        }
        if (v instanceof String s && (s.equals("true") || s.equals("false"))) {
            return Boolean.parseBoolean(s);
        }
        throw error(k, "must be true or false, got " + describe(v));
    }

    public String string(String k, String dflt) {
        Object v = raw(k);
        if (v == null) {
            return required(k, dflt);
        }
        if (v instanceof String s) {
            return s;
        }
        throw error(k, "must be a string, got " + describe(v));
    }

    /**
     * A layer spec, or a list of them with one per layer: each a mapping with a {@code type} key or
     * just the type's name. Returns one reader per layer; a single spec gives the same reader for
     * every layer, so its spec is read (and its errors reported) once. Keys are named
     * {@code k.key} for a single spec and {@code k[i].key} for layer i of a list.
     */
    public List<ConfigReader> perLayer(String k, String dflt, int layers) {
        Object v = raw(k);
        if (v == null) {
            v = required(k, dflt);
        }
        List<ConfigReader> out = new ArrayList<>();
        if (v instanceof List<?> list) {
            if (list.size() != layers) {
                throw error(k, "lists " + list.size() + " entries but n_layer is " + layers);
            }
            for (int i = 0; i < list.size(); i++) {
                out.add(spec(key(k) + "[" + i + "]", list.get(i)));
            }
            return out;
        }
        ConfigReader one = spec(key(k), v);
        for (int i = 0; i < layers; i++) {
            out.add(one);
        }
        return out;
    }

    /** A single spec under {@code k}: a mapping with a {@code type} key, or just the type's name. */
    public ConfigReader spec(String k, String dflt) {
        Object v = raw(k);
        if (v == null) {
            v = required(k, dflt);
        }
        return spec(key(k), v);
    }

    @SuppressWarnings("unchecked")
    private ConfigReader spec(String name, Object v) {
        if (v instanceof String s) {
            Map<String, Object> m = ordered();
            m.put("type", s);
            return new ConfigReader(source, name, m);
        }
        if (v instanceof Map<?, ?> m) {
            return new ConfigReader(source, name, (Map<String, Object>) m);
        }
        throw new IllegalArgumentException(source + ": " + name + " must be a layer type or a mapping with a type key, got "
                + describe(v));
    }

    /** An integer of at least {@code min}. */
    public int integer(String k, Integer dflt, int min) {
        int v = integer(k, dflt);
        if (v < min) {
            throw error(k, "must be at least " + min + ", got " + v);
        }
        return v;
    }

    @SuppressWarnings("unchecked")
    public Map<String, Object> section(String k) {
        Object v = raw(k);
        if (v == null) {
            return null;
        }
        if (v instanceof Map<?, ?> m) {
            return (Map<String, Object>) m;
        }
        throw error(k, "must be a mapping, got " + describe(v));
    }

    /** A reader over the mapping under {@code k} (its keys prefixed {@code k.}), or null when the key is absent. */
    public ConfigReader child(String k) {
        Map<String, Object> m = section(k);
        return m == null ? null : new ConfigReader(source, key(k), m);
    }

    private <T> T required(String k, T dflt) {
        if (dflt == null) {
            throw error(k, "is required");
        }
        return dflt;
    }

    /** Rejects keys that no getter asked for. */
    public void finish() {
        for (String k : values.keySet()) {
            if (!known.contains(k)) {
                throw new IllegalArgumentException(source + ": unknown key " + key(k) + " (known keys: "
                        + String.join(", ", known) + ")");
            }
        }
    }

    private static String describe(Object v) {
        return v instanceof String ? "\"" + v + "\"" : v + " (" + v.getClass().getSimpleName().toLowerCase() + ")";
    }

    /** An insertion-ordered copy, for writing a resolved config back out. */
    public static Map<String, Object> ordered() {
        return new LinkedHashMap<>();
    }
}
