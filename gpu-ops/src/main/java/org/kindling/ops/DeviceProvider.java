package org.kindling.ops;

import java.util.Optional;

/**
 * Opens devices of one kind by name ({@code cpu}, {@code reference}, later {@code cuda}), found by
 * {@link java.util.ServiceLoader} through {@code META-INF/services/org.kindling.ops.DeviceProvider},
 * so that {@link Device#open(String)} needs no compile-time knowledge of any implementation and a
 * backend in its own module registers itself by being on the classpath.
 */
public interface DeviceProvider {
    /** The name before the ':' of a device spec: {@code cpu} in {@code cpu:4}. */
    String name();

    /** What the part after ':' means, for error messages and help, e.g. "threads (default: one per core)". */
    String argumentHelp();

    /**
     * Why devices of this kind cannot be opened in this process (e.g. "no CUDA driver"), or empty
     * when they can. Asked before opening, so that a missing driver is reported as such.
     */
    Optional<String> unavailable();

    /**
     * Checks an argument without opening anything (a driver validates a spec that its tasks open).
     *
     * @param argument the part of the spec after ':', or null when the spec has none
     * @throws IllegalArgumentException naming the argument and what it should be
     */
    void checkArgument(String argument);

    /** Opens a device; {@code argument} as for {@link #checkArgument}, already checked. */
    Device open(String argument);
}
