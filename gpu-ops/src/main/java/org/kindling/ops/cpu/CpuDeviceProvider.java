package org.kindling.ops.cpu;

import java.util.Optional;
import org.kindling.ops.Device;
import org.kindling.ops.DeviceProvider;

/** {@code cpu} and {@code cpu:THREADS}: the host CPU, by default with one thread per available core. */
public final class CpuDeviceProvider implements DeviceProvider {
    @Override
    public String name() {
        return "cpu";
    }

    @Override
    public String argumentHelp() {
        return "threads, a whole number >= 1 (default: one per available core)";
    }

    @Override
    public Optional<String> unavailable() {
        return Optional.empty();
    }

    @Override
    public void checkArgument(String argument) {
        threads(argument);
    }

    @Override
    public Device open(String argument) {
        return CpuDevice.open(threads(argument));
    }

    private static int threads(String argument) {
        if (argument == null) {
            return Runtime.getRuntime().availableProcessors();
        }
        try {
            int n = Integer.parseInt(argument);
            if (n >= 1) {
                return n;
            }
        } catch (NumberFormatException ignored) {
            // reported below
        }
        throw new IllegalArgumentException("device \"cpu:" + argument + "\": the argument is the thread count, a whole number >= 1");
    }
}
