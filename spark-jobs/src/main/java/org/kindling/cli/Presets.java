package org.kindling.cli;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/** Finds a model config: a YAML path as given, or a preset name under {@code conf/models/}. */
final class Presets {
    private Presets() {
    }

    private static List<Path> dirs() {
        List<Path> dirs = new ArrayList<>();
        String home = System.getProperty("kindling.home");
        if (home != null) {
            dirs.add(Path.of(home, "conf", "models"));
        }
        dirs.add(Path.of("conf", "models"));
        dirs.add(Path.of("..", "conf", "models"));
        return dirs;
    }

    static Path resolve(String nameOrPath) {
        Path given = Path.of(nameOrPath);
        if (Files.isRegularFile(given)) {
            return given;
        }
        for (Path dir : dirs()) {
            Path p = dir.resolve(nameOrPath + ".yaml");
            if (Files.isRegularFile(p)) {
                return p;
            }
        }
        throw new IllegalArgumentException("no model config \"" + nameOrPath + "\": not a file, and not a preset in "
                + dirs().stream().map(Path::toString).toList());
    }
}
