package org.kindling.collective;

import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.DataInputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.SocketException;
import java.net.SocketTimeoutException;
import java.nio.ByteBuffer;
import java.security.MessageDigest;
import java.time.Duration;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.ScheduledThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import javax.crypto.Mac;
import javax.crypto.ShortBufferException;

/**
 * An authenticated connection after the {@link Handshake}: a stream of frames, each
 * {@code op (8 bytes), length (4), payload, tag (32)}, where the tag is HMAC-SHA256 under the key
 * of this direction over the frame's sequence number, op, length and payload. A host on the path
 * can therefore neither alter, drop, replay nor reorder a frame unnoticed. Lengths read from the
 * wire are checked against the caller's cap before anything is allocated.
 *
 * <p>Large payloads are MACed in chunks as they are written and read, so hashing overlaps the
 * transfer; the Macs and the receive buffer are reused. Writes have a deadline: a watchdog closes
 * the socket when a write has not finished within the write timeout (a peer that stopped reading),
 * and the write fails with {@link WriteTimeout}. One thread may send while another receives; after
 * any error the link is unusable and should be closed.
 */
final class Link implements AutoCloseable {
    /** Bytes MACed and moved per step, small enough that hashing and the transfer overlap. */
    private static final int CHUNK = 256 << 10;
    private static final int HEADER = Long.BYTES + Integer.BYTES;
    private static final ScheduledThreadPoolExecutor WATCHDOG = watchdog();

    /** The peer stopped reading: a write did not finish within the write timeout. */
    static final class WriteTimeout extends IOException {
        WriteTimeout(String message, Throwable cause) {
            super(message, cause);
        }
    }

    /** A frame whose tag does not match: altered on the way, or not sent by the holder of the session's key. */
    static final class Tampered extends IOException {
        Tampered(String message) {
            super(message);
        }
    }

    /** A frame other than the one due (a peer out of step), or longer than allowed. */
    static final class Unexpected extends IOException {
        Unexpected(String message) {
            super(message);
        }
    }

    private final Socket socket;
    private final String peer;
    private final long writeTimeoutNanos;
    private final DataInputStream in;
    private final OutputStream out;
    private final Mac sendMac;
    private final Mac receiveMac;
    private final ByteBuffer sendHeader = ByteBuffer.allocate(Long.BYTES + HEADER);
    private final ByteBuffer receiveHeader = ByteBuffer.allocate(Long.BYTES + HEADER);
    private final byte[] sendTag = new byte[Handshake.TAG];
    private final byte[] expectedTag = new byte[Handshake.TAG];
    private final byte[] receivedTag = new byte[Handshake.TAG];
    private byte[] buffer = new byte[0];
    private long sent;
    private long received;
    private long lastOp;
    private volatile boolean writeTimedOut;

    /**
     * @param peer how errors name the other side, e.g. {@code rank 1 (host:port)}
     * @param writeTimeout how long one frame's write may take before the link is closed
     */
    Link(Socket socket, Handshake.Session session, String peer, Duration writeTimeout) throws IOException {
        this.socket = socket;
        this.peer = peer;
        this.writeTimeoutNanos = writeTimeout.toNanos();
        this.in = new DataInputStream(new BufferedInputStream(socket.getInputStream(), 1 << 16));
        this.out = new BufferedOutputStream(socket.getOutputStream(), 1 << 16);
        this.sendMac = session.send;
        this.receiveMac = session.receive;
    }

    /** Times {@link #dial} tries again when the acceptor drops it before authenticating (a wrong secret fails this often too). */
    static final int DIAL_ATTEMPTS = 3;

    /**
     * Connects to {@code host:port} and authenticates, retrying until {@code deadline} (a
     * {@link System#nanoTime} value) while nothing listens there yet, and up to
     * {@link #DIAL_ATTEMPTS} times in all when the acceptor drops us before authenticating (it may
     * be busy with strangers).
     */
    static Link dial(String host, int port, RunSecret secret, String purpose, String peer, Duration writeTimeout, long deadline)
            throws IOException {
        int hungUp = 0;
        while (true) {
            Socket s = new Socket();
            try {
                int left = (int) Math.min(Integer.MAX_VALUE, (deadline - System.nanoTime()) / 1_000_000);
                if (left <= 0) {
                    throw new SocketTimeoutException("gave up reaching " + peer + " at the deadline");
                }
                s.connect(new InetSocketAddress(host, port), left);
                s.setTcpNoDelay(true);
                s.setSoTimeout(Math.min(left, 10_000));
                return new Link(s, Handshake.connect(s, secret, purpose), peer, writeTimeout);
            } catch (SocketException | Handshake.HungUp e) {
                s.close();
                if (System.nanoTime() - deadline > 0 || (!(e instanceof java.net.ConnectException) && ++hungUp >= DIAL_ATTEMPTS)) {
                    throw new IOException("could not reach " + peer + " at " + host + ":" + port + ": " + e.getMessage(), e);
                }
                sleep(50);
            } catch (IOException e) {
                s.close();
                throw new IOException("could not connect to " + peer + " at " + host + ":" + port + ": " + e.getMessage(), e);
            }
        }
    }

    private static void sleep(long ms) throws IOException {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new java.io.InterruptedIOException("interrupted");
        }
    }

    private static ScheduledThreadPoolExecutor watchdog() {
        ScheduledThreadPoolExecutor w = new ScheduledThreadPoolExecutor(1, r -> {
            Thread t = new Thread(r, "kindling-link-watchdog");
            t.setDaemon(true);
            return t;
        });
        w.setRemoveOnCancelPolicy(true);
        return w;
    }

    String peer() {
        return peer;
    }

    /**
     * How long a read waits for the next bytes before failing with a {@link java.net.SocketTimeoutException};
     * zero waits until the link is closed (for a peer that something else watches).
     */
    void readTimeout(Duration d) throws SocketException {
        socket.setSoTimeout(d.isZero() ? 0 : (int) Math.max(1, Math.min(Integer.MAX_VALUE, d.toMillis())));
    }

    /** Sends one frame of {@code b[off, off+len)}. */
    void send(long op, byte[] b, int off, int len) throws IOException {
        sendHeader.putLong(0, sent).putLong(Long.BYTES, op).putInt(2 * Long.BYTES, len);
        sendMac.update(sendHeader.array());
        ScheduledFuture<?> alarm = WATCHDOG.schedule(this::writeTimedOut, writeTimeoutNanos, TimeUnit.NANOSECONDS);
        try {
            out.write(sendHeader.array(), Long.BYTES, HEADER);
            for (int p = 0; p < len; p += CHUNK) {
                int n = Math.min(CHUNK, len - p);
                sendMac.update(b, off + p, n);
                out.write(b, off + p, n);
            }
            sendMac.doFinal(sendTag, 0);
            out.write(sendTag);
            out.flush();
        } catch (IOException e) {
            if (writeTimedOut) {
                throw new WriteTimeout(peer + " stopped reading: a frame of " + len + " bytes was not taken within "
                        + Duration.ofNanos(writeTimeoutNanos).toSeconds() + " s", e);
            }
            throw e;
        } catch (ShortBufferException e) {
            throw new IllegalStateException(e);
        } finally {
            alarm.cancel(false);
        }
        sent++;
    }

    private void writeTimedOut() {
        writeTimedOut = true;
        close();
    }

    /**
     * Receives one frame into {@link #buffer()}; returns its length. The frame must carry {@code op}
     * (any if negative) and {@code length} bytes (any up to {@code maxLength} if negative); both are
     * checked before the payload is read or room is made for it.
     */
    int receive(long op, int length, int maxLength) throws IOException {
        in.readFully(receiveHeader.array(), Long.BYTES, HEADER);
        long theirOp = receiveHeader.getLong(Long.BYTES);
        int n = receiveHeader.getInt(2 * Long.BYTES);
        if ((op >= 0 && theirOp != op) || (length >= 0 && n != length)) {
            throw new Unexpected(peer + " sent operation " + theirOp + " of " + n + " bytes where operation " + (op >= 0 ? op : "any")
                    + " of " + (length >= 0 ? length : "up to " + maxLength) + " bytes was due (out of step)");
        }
        if (n < 0 || n > maxLength) {
            throw new Unexpected(peer + " announced a frame of " + n + " bytes; at most " + maxLength + " are allowed here");
        }
        if (buffer.length < n) {
            buffer = new byte[n];
        }
        receiveHeader.putLong(0, received);
        receiveMac.update(receiveHeader.array());
        for (int p = 0; p < n; p += CHUNK) {
            int c = Math.min(CHUNK, n - p);
            in.readFully(buffer, p, c);
            receiveMac.update(buffer, p, c);
        }
        in.readFully(receivedTag);
        try {
            receiveMac.doFinal(expectedTag, 0);
        } catch (ShortBufferException e) {
            throw new IllegalStateException(e);
        }
        if (!MessageDigest.isEqual(expectedTag, receivedTag)) {
            throw new Tampered("frame " + received + " (operation " + theirOp + ", " + n + " bytes) from " + peer
                    + " failed authentication: it was altered on the way or was not sent by the peer this connection authenticated");
        }
        received++;
        lastOp = theirOp;
        return n;
    }

    /** The last received frame's payload, in {@code [0, length)}; reused by the next {@link #receive}. */
    byte[] buffer() {
        return buffer;
    }

    /** The op of the last received frame. */
    long lastOp() {
        return lastOp;
    }

    /** Room the receive buffer holds now (it grows only for frames that passed the length checks). */
    int bufferCapacity() {
        return buffer.length;
    }

    @Override
    public void close() {
        try {
            socket.close();
        } catch (IOException ignored) {
            // closing to stop both directions; nothing more to do
        }
    }
}
