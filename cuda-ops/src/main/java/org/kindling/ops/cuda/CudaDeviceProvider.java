package org.kindling.ops.cuda;

import java.util.Optional;
import org.kindling.ops.Device;
import org.kindling.ops.DeviceProvider;

/** {@code cuda} and {@code cuda:ORDINAL}: a CUDA GPU through JCuda's driver API, device 0 by default. */
public final class CudaDeviceProvider implements DeviceProvider {
    @Override
    public String name() {
        return "cuda";
    }

    @Override
    public String argumentHelp() {
        return "device ordinal, a whole number >= 0 (default: 0)";
    }

    @Override
    public Optional<String> unavailable() {
        return Cuda.probe().unavailable();
    }

    @Override
    public void checkArgument(String argument) {
        ordinal(argument);
    }

    /**
     * Opens a GPU.
     *
     * @throws IllegalArgumentException if the ordinal is not below this machine's device count
     */
    @Override
    public Device open(String argument) {
        int ordinal = ordinal(argument);
        Cuda.Probe probe = Cuda.probe();
        if (probe.unavailable().isPresent()) {
            throw new IllegalArgumentException("device \"cuda:" + ordinal + "\" is unavailable here: " + probe.unavailable().get());
        }
        if (ordinal >= probe.devices()) {
            throw new IllegalArgumentException("device \"cuda:" + ordinal + "\": ordinal out of range, this machine has "
                    + probe.devices() + " CUDA device" + (probe.devices() == 1 ? "" : "s"));
        }
        return CudaDevice.open(ordinal, probe.fatbin());
    }

    private static int ordinal(String argument) {
        if (argument == null) {
            return 0;
        }
        try {
            int n = Integer.parseInt(argument);
            if (n >= 0) {
                return n;
            }
        } catch (NumberFormatException ignored) {
            // reported below
        }
        throw new IllegalArgumentException("device \"cuda:" + argument + "\": the argument is the device ordinal, a whole number >= 0");
    }
}
