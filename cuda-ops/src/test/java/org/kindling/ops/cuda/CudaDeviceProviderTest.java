package org.kindling.ops.cuda;

import static org.junit.jupiter.api.Assertions.assertDoesNotThrow;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Optional;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.kindling.ops.Device;
import org.kindling.ops.DeviceProvider;

/** The cuda provider is found by name and, where it cannot open a GPU, says why in one line. */
class CudaDeviceProviderTest {
    @Test
    void serviceLoaderFindsTheProvider() {
        assertTrue(Device.providers().stream().anyMatch(p -> p.name().equals("cuda")), "providers: "
                + Device.providers().stream().map(DeviceProvider::name).toList());
        assertTrue(Device.provider("cuda:1") instanceof CudaDeviceProvider);
    }

    @Test
    void argumentsAreCheckedWithoutTheHardware() {
        assertDoesNotThrow(() -> Device.check("cuda"));
        assertDoesNotThrow(() -> Device.check("cuda:3"));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Device.check("cuda:-1"));
        assertEquals("device \"cuda:-1\": the argument is the device ordinal, a whole number >= 0", e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> Device.check("cuda:gpu0"));
    }

    @Test
    void withoutAGpuTheReasonIsOneClearLineAndOpenFailsWithIt() {
        Optional<String> why = Device.provider("cuda").unavailable();
        assumeTrue(why.isPresent(), "a CUDA device is available here");
        String reason = why.get();
        assertTrue(reason.startsWith("no CUDA driver: libcuda.so.1 is not loadable")
                || reason.startsWith("no CUDA device")
                || reason.startsWith("the CUDA kernels were not built into this jar"), reason);
        assertFalse(reason.contains("\n"), reason);
        assertFalse(reason.contains("\tat "), reason);
        assertTrue(reason.length() < 400, reason);
        // Asked twice, the probe answers the same without touching JCuda again (a second touch would be NoClassDefFoundError).
        assertEquals(why, Device.provider("cuda").unavailable());
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Device.open("cuda"));
        assertEquals("device \"cuda\" is unavailable here: " + reason, e.getMessage());
        IllegalArgumentException direct = assertThrows(IllegalArgumentException.class, () -> new CudaDeviceProvider().open("0"));
        assertTrue(direct.getMessage().endsWith(reason), direct.getMessage());
    }

    @Test
    void withoutNvccTheBuildWritesWhyInsteadOfKernels(@TempDir Path out) throws Exception {
        ProcessBuilder pb = new ProcessBuilder("bash", "src/main/cuda/build-kernels.sh", "src/main/cuda", out.toString())
                .redirectErrorStream(true).redirectOutput(ProcessBuilder.Redirect.DISCARD);
        pb.environment().put("NVCC", "kindling-no-such-nvcc");
        Process p = pb.start();
        assertTrue(p.waitFor(60, TimeUnit.SECONDS), "build-kernels.sh did not finish");
        assertEquals(0, p.exitValue());
        assertFalse(Files.exists(out.resolve(Cuda.FATBIN)));
        assertEquals("the CUDA kernels were not built into this jar: kindling-no-such-nvcc was not found on the PATH of the machine that built it",
                Files.readString(out.resolve(Cuda.MISSING)).strip());
    }

    @Test
    void theJarCarriesTheKernelsOrSaysWhyNot() throws Exception {
        boolean fatbin = Cuda.class.getResource(Cuda.FATBIN) != null;
        boolean note = Cuda.class.getResource(Cuda.MISSING) != null;
        assertTrue(fatbin ^ note, "exactly one of " + Cuda.FATBIN + " and " + Cuda.MISSING + " must be built");
        if (fatbin) {
            try (var in = Cuda.class.getResourceAsStream(Cuda.FATBIN)) {
                byte[] head = in.readNBytes(4);
                // A fatbin's magic number 0xBA55ED50, little-endian.
                assertEquals(0x50, head[0] & 0xff);
                assertEquals(0xED, head[1] & 0xff);
                assertEquals(0x55, head[2] & 0xff);
                assertEquals(0xBA, head[3] & 0xff);
            }
        }
    }
}
