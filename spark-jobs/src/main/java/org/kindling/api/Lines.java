package org.kindling.api;

import java.io.PrintStream;
import java.io.PrintWriter;
import java.util.function.Consumer;

/** Where a builder's progress lines go: flushed line by line, so a notebook shows each as it comes. */
final class Lines {
    private Lines() {
    }

    static Consumer<String> of(PrintStream out) {
        return line -> {
            out.println(line);
            out.flush();
        };
    }

    static Consumer<String> of(PrintWriter out) {
        return line -> {
            out.println(line);
            out.flush();
        };
    }

    /** {@code chosen}, else System.err as it is now: a notebook kernel points it at the running cell's output. */
    static Consumer<String> orStderr(Consumer<String> chosen) {
        return chosen != null ? chosen : of(System.err);
    }
}
