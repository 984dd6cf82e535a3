package org.kindling.cli;

import java.io.IOException;
import java.io.PrintWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Comparator;
import java.util.stream.Stream;

/** Local scratch directories of commands and benchmarks. */
final class LocalFiles {
    private LocalFiles() {
    }

    /** Deletes {@code p} and everything under it; nothing to do when it does not exist. */
    static void deleteTree(Path p) throws IOException {
        if (!Files.exists(p)) {
            return;
        }
        try (Stream<Path> all = Files.walk(p)) {
            for (Path q : all.sorted(Comparator.reverseOrder()).toList()) {
                Files.deleteIfExists(q);
            }
        }
    }

    /**
     * {@link #deleteTree} for a {@code finally} block: a failure to clean up is reported on {@code err}
     * rather than thrown, so it cannot hide the exception the block is unwinding.
     */
    static void deleteTreeAfter(Path p, PrintWriter err) {
        try {
            deleteTree(p);
        } catch (IOException | RuntimeException e) {
            err.println("could not delete " + p + ": " + e.getMessage());
            err.flush();
        }
    }
}
