package org.kindling.models;

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
final class ConfigReader {
    private final String source;
    private final String prefix;
    private final Map<String, Object> values;
    private final Set<String> known = new LinkedHashSet<>();

    ConfigReader(String source, String prefix, Map<String, Object> values) {
        this.source = source;
        this.prefix = prefix;
        this.values = values == null ? Map.of() : values;
    }

    private String key(String k) {
        return prefix.isEmpty() ? k : prefix + "." + k;
    }

    /** Prefixes a validation error with the file it came from. */
    IllegalArgumentException invalid(IllegalArgumentException e) {
        return new IllegalArgumentException(source + ": " + e.getMessage(), e);
    }

    IllegalArgumentException error(String key, String message) {
        return new IllegalArgumentException(source + ": " + key(key) + " " + message);
    }

    private Object raw(String k) {
        known.add(k);
        return values.get(k);
    }

    boolean has(String k) {
        known.add(k);
        return values.containsKey(k);
    }

    int integer(String k, Integer dflt) {
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

    double number(String k, Double dflt) {
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

    String string(String k, String dflt) {
        Object v = raw(k);
        if (v == null) {
            return required(k, dflt);
        }
        if (v instanceof String s) {
            return s;
        }
        throw error(k, "must be a string, got " + describe(v));
    }

    /** A string, or a list of strings with one entry per layer. */
    List<String> perLayer(String k, String dflt, int layers) {
        Object v = raw(k);
        if (v == null) {
            v = required(k, dflt);
        }
        List<String> out = new ArrayList<>();
        if (v instanceof String s) {
            for (int i = 0; i < layers; i++) {
                out.add(s);
            }
            return out;
        }
        if (v instanceof List<?> list) {
            if (list.size() != layers) {
                throw error(k, "lists " + list.size() + " entries but n_layer is " + layers);
            }
            for (int i = 0; i < list.size(); i++) {
                if (!(list.get(i) instanceof String s)) {
                    throw error(k, "entry " + i + " must be a string, got " + describe(list.get(i)));
                }
                out.add(s);
            }
            return out;
        }
        throw error(k, "must be a string or a list of strings, got " + describe(v));
    }

    @SuppressWarnings("unchecked")
    Map<String, Object> section(String k) {
        Object v = raw(k);
        if (v == null) {
            return null;
        }
        if (v instanceof Map<?, ?> m) {
            return (Map<String, Object>) m;
        }
        throw error(k, "must be a mapping, got " + describe(v));
    }

    private <T> T required(String k, T dflt) {
        if (dflt == null) {
            throw error(k, "is required");
        }
        return dflt;
    }

    /** Rejects keys that no getter asked for. */
    void finish() {
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
    static Map<String, Object> ordered() {
        return new LinkedHashMap<>();
    }
}
