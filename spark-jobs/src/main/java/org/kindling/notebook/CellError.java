package org.kindling.notebook;

import java.util.List;

/**
 * A cell that did not compile or threw: the message is what the notebook shows as the error's
 * value, {@link #lines()} the traceback (diagnostics or the user's stack frames, never the kernel's).
 */
public final class CellError extends RuntimeException {
    private final List<String> lines;

    CellError(String message, List<String> lines) {
        super(message);
        this.lines = List.copyOf(lines);
    }

    /** The traceback lines shown under the error. */
    public List<String> lines() {
        return lines;
    }
}
