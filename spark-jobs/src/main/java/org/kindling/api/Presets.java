package org.kindling.api;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * Finds a model config (the CLI's {@code --config}, the API's {@code preset}): a YAML path as given,
 * or a preset name under {@code conf/models/} (of {@code kindling.home}, the working directory or its parent).
 */
public final class Presets {
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

    /** The YAML file of a preset name or path; an unknown name is an error listing where it looked. */
    public static Path resolve(String nameOrPath) {
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
