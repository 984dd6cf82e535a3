package org.kindling.api;

import java.util.Optional;
import org.kindling.ops.Device;

/** The builders' {@code device} option: checked, then opened. */
final class Devices {
    private Devices() {
    }

    /** Fails naming {@code spec} unless it names a provider in this build, with a valid argument, that this process can open. */
    static String check(String spec) {
        try {
            Device.check(spec);
        } catch (IllegalArgumentException e) {
            throw new InvalidOptionException("device", e.getMessage());
        }
        Optional<String> why = Device.provider(spec).unavailable();
        if (why.isPresent()) {
            throw new InvalidOptionException("device", spec + " is unavailable here: " + why.get());
        }
        return spec;
    }

    static Device open(String spec) {
        return Device.open(check(spec));
    }
}
