package org.kindling.cli;

import java.util.Optional;
import org.kindling.ops.Device;
import picocli.CommandLine;
import picocli.CommandLine.Option;

/** {@code --device}, taken by every command that computes, and its checks. */
final class DeviceOption {
    @Option(names = "--device", defaultValue = "cpu", paramLabel = "SPEC",
            description = {"the device to compute on: cpu (one thread per core), cpu:THREADS, reference (fp64, slow),",
                "or NAME[:ARG] of another device provider in this build, e.g. cuda:0 (default ${DEFAULT-VALUE})"})
    String spec = "cpu";

    /** The spec, checked: a provider in this build, a valid argument, and openable in this process. */
    String checked(CommandLine cmd) {
        return check(cmd, spec, true);
    }

    /** Opens the device, after {@link #checked}'s checks. */
    Device open(CommandLine cmd) {
        return Device.open(checked(cmd));
    }

    /**
     * Fails with a usage error naming {@code spec} and why unless it names a provider in this build
     * with a valid argument and, when {@code openableHere}, one this process can open.
     */
    static String check(CommandLine cmd, String spec, boolean openableHere) {
        try {
            Device.check(spec);
            Optional<String> why = openableHere ? Device.provider(spec).unavailable() : Optional.empty();
            if (why.isPresent()) {
                throw new CommandLine.ParameterException(cmd, "--device " + spec + " is unavailable here: " + why.get());
            }
        } catch (IllegalArgumentException e) {
            throw new CommandLine.ParameterException(cmd, "--device: " + e.getMessage());
        }
        return spec;
    }
}
