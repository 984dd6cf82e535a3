package org.kindling.ops.reference;

import java.util.Optional;
import org.kindling.ops.Device;
import org.kindling.ops.DeviceProvider;

/** {@code reference}: the fp64 reference device, which takes no argument. */
public final class ReferenceDeviceProvider implements DeviceProvider {
    @Override
    public String name() {
        return "reference";
    }

    @Override
    public String argumentHelp() {
        return "none";
    }

    @Override
    public Optional<String> unavailable() {
        return Optional.empty();
    }

    @Override
    public void checkArgument(String argument) {
        if (argument != null) {
            throw new IllegalArgumentException("device \"reference:" + argument + "\": reference takes no argument");
        }
    }

    @Override
    public Device open(String argument) {
        return ReferenceDevice.open();
    }
}
