package org.kindling.ops;

import java.util.Arrays;

/**
 * The offsets of packed variable-length sequences, as flash-attention's varlen API takes them: an
 * I32 tensor [B+1] on the device, for kernels that read them there, and the same offsets on the
 * host with the longest sequence, for launch configuration and CPU loops. So no kernel call reads
 * offsets back from a device (a synchronising copy on an asynchronous one). The host offsets are
 * validated here; that the device holds the same values is checked by the reference backend
 * ({@link #checkDevice}), never per call on a fast path.
 */
public final class Varlen {
    private final Tensor device;
    private final int[] host;
    private final int maxSeqlen;

    private Varlen(Tensor device, int[] host) {
        int max = checkOffsets(host, "cu_seqlens");
        if (device.dtype() != DType.I32 || device.numel() != host.length) {
            throw new IllegalArgumentException("cu_seqlens on the device must be I32 [" + host.length
                    + "] like the host offsets, got " + device);
        }
        this.device = device;
        this.host = host;
        this.maxSeqlen = max;
    }

    /**
     * Checks that offsets {@code what} number at least 2, start at 0 and never decrease.
     *
     * @return the longest run between neighbours
     */
    static int checkOffsets(int[] c, String what) {
        if (c.length < 2) {
            throw new IllegalArgumentException(what + " needs at least 2 offsets, got " + c.length);
        }
        if (c[0] != 0) {
            throw new IllegalArgumentException(what + "[0] must be 0, got " + c[0]);
        }
        int max = 0;
        for (int i = 1; i < c.length; i++) {
            if (c[i] < c[i - 1]) {
                throw new IllegalArgumentException(what + "[" + i + "] = " + c[i] + " is less than " + what + "[" + (i - 1)
                        + "] = " + c[i - 1]);
            }
            max = Math.max(max, c[i] - c[i - 1]);
        }
        return max;
    }

    /**
     * The offsets {@code host} (copied) that {@code device} holds.
     *
     * @throws IllegalArgumentException if the host offsets do not start at 0 or decrease, or the
     *     device tensor is not I32 of their length
     */
    public static Varlen of(Tensor device, int[] host) {
        return new Varlen(device, host.clone());
    }

    /** Offsets held on the device and copied from the host in one go, for tests and benches; the caller closes {@link #device}. */
    public static Varlen upload(Device dev, int[] host) {
        return of(dev.fromInts(host, host.length), host);
    }

    /** I32 [B+1] on the device. */
    public Tensor device() {
        return device;
    }

    /** The host offsets; callers must not modify them. */
    int[] host() {
        return host;
    }

    /** Packed rows covered: the last offset. */
    public int tokens() {
        return host[host.length - 1];
    }

    /** The longest sequence, as flash-attention's {@code max_seqlen}. */
    public int maxSeqlen() {
        return maxSeqlen;
    }

    /**
     * The host offsets after checking that they cover a tensor of {@code rows} packed rows;
     * {@code what} names the offsets and {@code tensor} the tensor in the error.
     */
    int[] over(int rows, String what, String tensor) {
        if (tokens() != rows) {
            throw new IllegalArgumentException(what + " ends at " + tokens() + " but " + tensor + " has " + rows + " rows");
        }
        return host;
    }

    /**
     * Reads the device offsets back and fails unless they equal the host's: what the reference
     * backend checks on every call, so a layer that hands over stale host offsets is caught in tests.
     */
    public void checkDevice(String what) {
        int[] d = device.toIntArray();
        if (!Arrays.equals(d, host)) {
            throw new IllegalArgumentException(what + " on the device " + Arrays.toString(d) + " differ from the host offsets "
                    + Arrays.toString(host));
        }
    }

    @Override
    public String toString() {
        return "cu_seqlens" + Arrays.toString(host);
    }
}
