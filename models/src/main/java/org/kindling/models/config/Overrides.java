package org.kindling.models.config;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * {@code --set key=value} on a parsed config: the key is a dotted path. A path that starts with a train key
 * ({@code lr}, {@code optimizer.ngrads}) means one under {@code train}; a path through a layer spec given as a name
 * ({@code mixer: h3}) turns it into a mapping ({@code {type: h3}}); a number indexes a per-layer
 * list ({@code mixer.1.type}); any other key on a list applies to every entry.
 */
final class Overrides {
    private Overrides() {
    }

    static Map<String, Object> apply(Map<String, Object> root, Map<String, String> overrides, Set<String> trainKeys) {
        Map<String, Object> out = copy(root);
        for (Map.Entry<String, String> e : overrides.entrySet()) {
            String key = e.getKey();
            Object value = RunConfig.scalar(e.getValue(), "--set " + key);
            List<String> path = new ArrayList<>(List.of(key.split("\\.", -1)));
            if (path.stream().anyMatch(String::isEmpty)) {
                throw new IllegalArgumentException("--set " + key + ": empty segment in the key");
            }
            if (trainKeys.contains(path.get(0))) {
                path.add(0, "train");
            }
            set(out, path, 0, value, key);
        }
        return out;
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> copy(Map<?, ?> m) {
        Map<String, Object> out = new LinkedHashMap<>();
        m.forEach((k, v) -> out.put(String.valueOf(k), deep(v)));
        return out;
    }

    private static Object deep(Object v) {
        if (v instanceof Map<?, ?> m) {
            return copy(m);
        }
        if (v instanceof List<?> l) {
            List<Object> out = new ArrayList<>();
            l.forEach(x -> out.add(deep(x)));
            return out;
        }
        return v;
    }

    @SuppressWarnings("unchecked")
    private static void set(Map<String, Object> m, List<String> path, int i, Object value, String key) {
        String k = path.get(i);
        if (i == path.size() - 1) {
            m.put(k, value);
            return;
        }
        Object next = m.get(k);
        if (next == null) {
            next = new LinkedHashMap<String, Object>();
            m.put(k, next);
        } else if (next instanceof String type) {
            Map<String, Object> spec = new LinkedHashMap<>();
            spec.put("type", type);
            next = spec;
            m.put(k, next);
        }
        into(next, path, i + 1, value, key);
    }

    @SuppressWarnings("unchecked")
    private static void into(Object node, List<String> path, int i, Object value, String key) {
        if (node instanceof Map<?, ?> map) {
            set((Map<String, Object>) map, path, i, value, key);
        } else if (node instanceof List<?> list) {
            List<Object> l = (List<Object>) list;
            String seg = path.get(i);
            if (seg.chars().allMatch(Character::isDigit)) {
                int idx = Integer.parseInt(seg);
                if (idx >= l.size()) {
                    throw new IllegalArgumentException("--set " + key + ": index " + idx + " is past the " + l.size() + " entries");
                }
                if (i == path.size() - 1) {
                    l.set(idx, value);
                    return;
                }
                if (l.get(idx) instanceof String type) {
                    Map<String, Object> spec = new LinkedHashMap<>();
                    spec.put("type", type);
                    l.set(idx, spec);
                }
                into(l.get(idx), path, i + 1, value, key);
            } else {
                for (int j = 0; j < l.size(); j++) {
                    if (l.get(j) instanceof String type) {
                        Map<String, Object> spec = new LinkedHashMap<>();
                        spec.put("type", type);
                        l.set(j, spec);
                    }
                    into(l.get(j), path, i, value, key);
                }
            }
        } else {
            throw new IllegalArgumentException("--set " + key + ": " + String.join(".", path.subList(0, i))
                    + " is a value, not a mapping or list");
        }
    }
}
