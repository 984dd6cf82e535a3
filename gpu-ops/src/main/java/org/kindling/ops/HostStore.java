package org.kindling.ops;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;

/**
 * Host memory outside the Java heap for state that lives off the device between uses (an optimizer's
 * moments under {@code train.offload.optimizer_state: host}): {@code length} floats in direct buffers
 * of at most {@link #CHUNK} floats each, so a store may exceed the 2³¹ bytes one buffer can address.
 * A backend moves a tensor's elements in and out with {@link Backend#copyToStore} and
 * {@link Backend#copyFromStore}. Starts zeroed.
 */
public final class HostStore implements AutoCloseable {
    /** Floats per direct buffer: 1 GiB. */
    static final int CHUNK = 1 << 28;

    /**
     * What a device does to a store's buffers so that it can copy straight between them and its
     * memory (a GPU page-locks them), and undoes before they are dropped.
     */
    public interface Pinning {
        /** Nothing to do: plain pageable memory. */
        Pinning NONE = new Pinning() {
            @Override
            public void pin(ByteBuffer buffer) {
            }

            @Override
            public void unpin(ByteBuffer buffer) {
            }
        };

        void pin(ByteBuffer buffer);

        void unpin(ByteBuffer buffer);
    }

    /** One piece of a copy: floats [at, at + count) of {@code buffer} (native order), and where they start in the copy. */
    @FunctionalInterface
    public interface BufferPiece {
        void copy(ByteBuffer buffer, int at, long index, int count);
    }

    private final long length;
    private final int chunk;
    private final Pinning pinning;
    private FloatBuffer[] chunks;
    private ByteBuffer[] bytes;

    private HostStore(long length, int chunk, Pinning pinning) {
        if (length < 0) {
            throw new IllegalArgumentException("a host store holds >= 0 floats, got " + length);
        }
        this.length = length;
        this.chunk = chunk;
        this.pinning = pinning;
        int n = (int) ((length + chunk - 1) / chunk);
        chunks = new FloatBuffer[n];
        bytes = new ByteBuffer[n];
        int pinned = 0;
        try {
            for (int i = 0; i < n; i++) {
                int size = (int) Math.min(chunk, length - (long) i * chunk);
                bytes[i] = ByteBuffer.allocateDirect(size * Float.BYTES).order(ByteOrder.nativeOrder());
                chunks[i] = bytes[i].asFloatBuffer();
                pinning.pin(bytes[i]);
                pinned++;
            }
        } catch (RuntimeException | Error e) {
            for (int i = 0; i < pinned; i++) {
                pinning.unpin(bytes[i]);
            }
            throw e;
        }
    }

    /** {@code length} zeroed floats off the heap. */
    public static HostStore allocate(long length) {
        return new HostStore(length, CHUNK, Pinning.NONE);
    }

    /** {@code length} zeroed floats off the heap, each buffer {@code pinning.pin}ned, and unpinned on {@link #close}. */
    public static HostStore allocate(long length, Pinning pinning) {
        return new HostStore(length, CHUNK, pinning);
    }

    /** A pinned store split into buffers of {@code chunk} floats: for tests. */
    static HostStore allocate(long length, int chunk, Pinning pinning) {
        if (chunk < 1) {
            throw new IllegalArgumentException("chunk must be >= 1, got " + chunk);
        }
        return new HostStore(length, chunk, pinning);
    }

    /**
     * Visits floats [offset, offset + n) as pieces of the store's buffers, in order, for a device
     * that copies between them and its own memory directly.
     */
    public void forEachPiece(long offset, int n, BufferPiece piece) {
        check(offset, n, 0, n);
        long done = 0;
        while (done < n) {
            int c = (int) ((offset + done) / chunk);
            int at = (int) ((offset + done) % chunk);
            int k = (int) Math.min(n - done, chunks[c].capacity() - at);
            piece.copy(bytes[c], at, done, k);
            done += k;
        }
    }

    /** A store split into buffers of {@code chunk} floats: for tests of copies across buffer boundaries. */
    static HostStore allocate(long length, int chunk) {
        return allocate(length, chunk, Pinning.NONE);
    }

    public long length() {
        return length;
    }

    public long bytes() {
        return length * Float.BYTES;
    }

    /** Copies {@code n} floats from {@code src[from..]} to this store at {@code offset}. */
    public void put(long offset, float[] src, int from, int n) {
        check(offset, n, from, src.length);
        forPieces(offset, from, n, (b, at, i, k) -> b.put(at, src, i, k));
    }

    /** Copies {@code n} floats of this store at {@code offset} into {@code dst[from..]}. */
    public void get(long offset, float[] dst, int from, int n) {
        check(offset, n, from, dst.length);
        forPieces(offset, from, n, (b, at, i, k) -> b.get(at, dst, i, k));
    }

    /** One copy between a buffer's floats [at, at + k) and an array's [i, i + k). */
    private interface Piece {
        void copy(FloatBuffer b, int at, int i, int k);
    }

    /** Splits n floats at {@code offset} (array index {@code from}) at buffer boundaries. */
    private void forPieces(long offset, int from, int n, Piece piece) {
        while (n > 0) {
            FloatBuffer b = chunks[(int) (offset / chunk)];
            int at = (int) (offset % chunk);
            int k = Math.min(n, b.capacity() - at);
            piece.copy(b, at, from, k);
            offset += k;
            from += k;
            n -= k;
        }
    }

    private void check(long offset, int n, int from, int arrayLength) {
        if (chunks == null) {
            throw new IllegalStateException("host store of " + length + " floats is closed");
        }
        if (offset < 0 || n < 0 || offset + n > length || from < 0 || from + n > arrayLength) {
            throw new IndexOutOfBoundsException("floats [" + offset + ", " + (offset + n) + ") of a host store of " + length
                    + " (array [" + from + ", " + (from + n) + ") of " + arrayLength + ")");
        }
    }

    public boolean isClosed() {
        return chunks == null;
    }

    /** Unpins and drops the buffers: the memory goes back when the collector frees them; any later copy fails. */
    @Override
    public void close() {
        if (chunks == null) {
            return;
        }
        chunks = null;
        RuntimeException failed = null;
        for (ByteBuffer b : bytes) {
            try {
                pinning.unpin(b);
            } catch (RuntimeException e) {
                // Every buffer gets its chance: one that stays pinned cannot be unpinned later.
                if (failed == null) {
                    failed = e;
                } else {
                    failed.addSuppressed(e);
                }
            }
        }
        bytes = null;
        if (failed != null) {
            throw failed;
        }
    }
}
