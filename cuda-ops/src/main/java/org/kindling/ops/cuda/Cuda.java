package org.kindling.ops.cuda;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.util.Optional;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import jcuda.Pointer;
import jcuda.driver.CUdeviceptr;
import jcuda.driver.CUresult;
import jcuda.driver.JCudaDriver;

/**
 * What this process can do with CUDA, found out once: the kernels in this jar, the driver
 * (JCuda's driver API needs only {@code libcuda.so.1}) and the device count. Without a driver
 * JCuda's classes load but the first call into {@link JCudaDriver} throws
 * {@link UnsatisfiedLinkError} (and every later one {@link NoClassDefFoundError}), so the probe
 * catches any {@link Throwable} and keeps the reason as one line.
 */
final class Cuda {
    /** Where build-kernels.sh puts the fatbin (or the note saying why it is absent) inside the jar. */
    static final String FATBIN = "kernels.fatbin";
    static final String MISSING = "kernels-missing.txt";

    private Cuda() {
    }

    /** The probe's answer: a reason devices cannot be opened, or the device count. */
    record Probe(Optional<String> unavailable, int devices, byte[] fatbin) {
    }

    private static final class Holder {
        static final Probe PROBE = run();
    }

    static Probe probe() {
        return Holder.PROBE;
    }

    private static Probe run() {
        byte[] fatbin;
        try {
            fatbin = resource(FATBIN);
            if (fatbin == null) {
                byte[] note = resource(MISSING);
                return unavailable(note == null
                        ? "the CUDA kernels are missing from this jar (neither " + FATBIN + " nor " + MISSING + ")"
                        : new String(note, StandardCharsets.UTF_8).strip());
            }
        } catch (IOException e) {
            return unavailable("the CUDA kernels in this jar cannot be read: " + e.getMessage());
        }
        int result;
        try {
            result = JCudaDriver.cuInit(0);
        } catch (Throwable t) {
            String detail = oneLine(t);
            return unavailable(detail.startsWith("libcuda.so")
                    ? "no CUDA driver: libcuda.so.1 is not loadable (" + detail + ")"
                    : "JCuda's driver binding does not load here (" + detail + ")");
        }
        if (result == CUresult.CUDA_ERROR_NO_DEVICE) {
            return unavailable("no CUDA device: the driver is loaded but sees no GPU");
        }
        if (result != CUresult.CUDA_SUCCESS) {
            return unavailable("the CUDA driver failed to initialise: " + CUresult.stringFor(result));
        }
        int[] count = new int[1];
        result = JCudaDriver.cuDeviceGetCount(count);
        if (result != CUresult.CUDA_SUCCESS) {
            return unavailable("the CUDA driver cannot count devices: " + CUresult.stringFor(result));
        }
        if (count[0] == 0) {
            return unavailable("no CUDA device: the driver is loaded but sees no GPU");
        }
        return new Probe(Optional.empty(), count[0], fatbin);
    }

    private static Probe unavailable(String why) {
        return new Probe(Optional.of(why), 0, null);
    }

    private static byte[] resource(String name) throws IOException {
        try (InputStream in = Cuda.class.getResourceAsStream(name)) {
            return in == null ? null : in.readAllBytes();
        }
    }

    private static final Pattern MISSING_LIBRARY = Pattern.compile("([\\w.+-]+\\.so[\\w.]*): cannot open shared object file[^\\n]*");

    /**
     * A throwable as one short line. JCuda's link error is a page of nested stack traces for every
     * way it tried to load its library; the line that matters names the shared library the system
     * could not open (libcuda.so.1 on a machine without a driver).
     */
    static String oneLine(Throwable t) {
        String msg = t.getMessage() == null ? "" : t.getMessage().strip();
        Matcher missing = MISSING_LIBRARY.matcher(msg);
        String line = null;
        while (missing.find()) {
            line = missing.group().strip();
        }
        if (line == null) {
            int nl = msg.indexOf('\n');
            line = t.getClass().getSimpleName() + (msg.isEmpty() ? "" : ": " + (nl < 0 ? msg : msg.substring(0, nl).strip()));
        }
        return line.length() > 200 ? line.substring(0, 200) + "…" : line;
    }

    /**
     * Fails unless a driver call succeeded.
     *
     * @throws IllegalStateException naming the call and CUDA's error
     */
    static void check(int result, String what) {
        if (result != CUresult.CUDA_SUCCESS) {
            throw new IllegalStateException("CUDA " + what + " failed: " + CUresult.stringFor(result));
        }
    }

    /**
     * The kernel parameter array cuLaunchKernel takes for {@code args}: device pointers, and ints,
     * longs and floats (C's int, long long and float).
     *
     * @throws IllegalArgumentException naming the kernel and argument of any other type
     */
    static Pointer params(String kernel, Object... args) {
        Pointer[] params = new Pointer[args.length];
        for (int i = 0; i < args.length; i++) {
            Object a = args[i];
            if (a instanceof CUdeviceptr p) {
                params[i] = Pointer.to(p);
            } else if (a instanceof Integer v) {
                params[i] = Pointer.to(new int[] {v});
            } else if (a instanceof Long v) {
                params[i] = Pointer.to(new long[] {v});
            } else if (a instanceof Float v) {
                params[i] = Pointer.to(new float[] {v});
            } else {
                throw new IllegalArgumentException("kernel argument " + i + " of " + kernel + " is a " + a.getClass());
            }
        }
        return Pointer.to(params);
    }
}
