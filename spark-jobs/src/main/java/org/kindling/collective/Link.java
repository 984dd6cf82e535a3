package org.kindling.collective;

import java.io.EOFException;
import java.io.IOException;
import java.io.InterruptedIOException;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.SocketException;
import java.net.SocketTimeoutException;
import java.nio.ByteBuffer;
import java.nio.channels.AsynchronousCloseException;
import java.nio.channels.ClosedSelectorException;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.channels.SocketChannel;
import java.security.MessageDigest;
import java.time.Duration;
import javax.crypto.Mac;
import javax.crypto.ShortBufferException;

/**
 * An authenticated connection after the {@link Handshake}: a stream of frames, each
 * {@code op (8 bytes), length (4), payload, tag (32)}, where the tag is HMAC-SHA256 under the key
 * of this direction over the frame's sequence number, op, length and payload. A host on the path
 * can therefore neither alter, drop, replay nor reorder a frame unnoticed. Lengths read from the
 * wire are checked against the caller's cap before anything is allocated.
 *
 * <p>The link moves bytes through its non-blocking {@link SocketChannel} straight between the
 * caller's buffers and the socket: a direct buffer (the ring's gradients) crosses without a copy
 * through the Java heap. Large payloads are MACed in chunks as they are written and read, so
 * hashing overlaps the transfer. Every wait has a deadline: a read fails with a
 * {@link SocketTimeoutException} when no bytes arrive for the read timeout, and a frame's write
 * fails with {@link WriteTimeout} when the peer has not taken it within the write timeout. One
 * thread may send while another receives; after any error the link is unusable and should be
 * closed.
 */
final class Link implements AutoCloseable {
    /** Bytes MACed and moved per step, small enough that hashing and the transfer overlap. */
    static final int CHUNK = 256 << 10;
    private static final int HEADER = Long.BYTES + Integer.BYTES;

    /** The peer stopped reading: a write did not finish within the write timeout. */
    static final class WriteTimeout extends IOException {
        WriteTimeout(String message) {
            super(message);
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

    private final SocketChannel channel;
    private final Selector readable;
    private final Selector writable;
    private final String peer;
    private final long writeTimeoutNanos;
    private volatile long readTimeoutNanos = 10_000_000_000L;
    private final Mac sendMac;
    private final Mac receiveMac;
    /** Sequence number, op and length: the first 8 bytes are MACed but never sent (both sides count frames). */
    private final ByteBuffer sendHeader = ByteBuffer.allocate(Long.BYTES + HEADER);
    private final ByteBuffer receiveHeader = ByteBuffer.allocate(Long.BYTES + HEADER);
    private final byte[] sendTag = new byte[Handshake.TAG];
    private final byte[] expectedTag = new byte[Handshake.TAG];
    private final byte[] receivedTag = new byte[Handshake.TAG];
    private final ByteBuffer sendTagBuffer = ByteBuffer.wrap(sendTag);
    private final ByteBuffer none = ByteBuffer.allocate(0);
    private final ByteBuffer[] gather = new ByteBuffer[3];
    private byte[] buffer = new byte[0];
    private long sent;
    private long received;
    private long lastOp;
    /** The op of the frame being received, which becomes {@link #lastOp} once its tag checks out. */
    private long incomingOp;
    private int incomingLength;

    /**
     * @param socket a connected socket with a channel ({@link SocketChannel#socket()}), which the link takes over
     * @param peer how errors name the other side, e.g. {@code rank 1 (host:port)}
     * @param writeTimeout how long one frame's write may take before the link fails
     */
    Link(Socket socket, Handshake.Session session, String peer, Duration writeTimeout) throws IOException {
        if (socket.getChannel() == null) {
            throw new IllegalArgumentException("a link needs a socket opened as a SocketChannel, got " + socket);
        }
        this.channel = socket.getChannel();
        this.peer = peer;
        this.writeTimeoutNanos = writeTimeout.toNanos();
        this.sendMac = session.send;
        this.receiveMac = session.receive;
        channel.configureBlocking(false);
        Selector r = Selector.open();
        try {
            this.writable = Selector.open();
        } catch (IOException e) {
            r.close();
            throw e;
        }
        this.readable = r;
        channel.register(readable, SelectionKey.OP_READ);
        channel.register(writable, SelectionKey.OP_WRITE);
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
            Socket s = SocketChannel.open().socket();
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
            throw new InterruptedIOException("interrupted");
        }
    }

    String peer() {
        return peer;
    }

    /**
     * How long a read waits for the next bytes before failing with a {@link SocketTimeoutException};
     * zero waits until the link is closed (for a peer that something else watches).
     */
    void readTimeout(Duration d) {
        readTimeoutNanos = d.isZero() ? 0 : Math.max(1_000_000, d.toNanos());
    }

    /** Sends one frame of {@code b[off, off+len)}. */
    void send(long op, byte[] b, int off, int len) throws IOException {
        send(op, ByteBuffer.wrap(b, off, len));
    }

    /**
     * Sends one frame of {@code payload}'s remaining bytes, taken straight from the buffer (for a
     * direct one, without a copy through the heap); the buffer's position and limit are left as they were.
     */
    void send(long op, ByteBuffer payload) throws IOException {
        int len = payload.remaining();
        long deadline = System.nanoTime() + writeTimeoutNanos;
        sendHeader.clear();
        sendHeader.putLong(0, sent).putLong(Long.BYTES, op).putInt(2 * Long.BYTES, len);
        sendMac.update(sendHeader.array());
        sendHeader.position(Long.BYTES);
        ByteBuffer chunk = payload.duplicate();
        int start = payload.position();
        try {
            // One gathering write per chunk: the header rides with the first, the tag with the last.
            for (int p = 0; p == 0 || p < len; p += CHUNK) {
                int n = Math.min(CHUNK, len - p);
                chunk.limit(start + p + n).position(start + p);
                sendMac.update(chunk);
                chunk.position(start + p);
                boolean last = p + n >= len;
                if (last) {
                    sendMac.doFinal(sendTag, 0);
                }
                gather[0] = p == 0 ? sendHeader : none;
                gather[1] = chunk;
                gather[2] = last ? sendTagBuffer.clear() : none;
                writeFully(gather, deadline, len);
            }
        } catch (ShortBufferException e) {
            throw new IllegalStateException(e);
        }
        sent++;
    }

    private void writeFully(ByteBuffer[] bufs, long deadline, int frameBytes) throws IOException {
        while (bufs[0].hasRemaining() || bufs[1].hasRemaining() || bufs[2].hasRemaining()) {
            if (channel.write(bufs) > 0) {
                continue;
            }
            long left = deadline - System.nanoTime();
            if (left <= 0) {
                close();
                throw new WriteTimeout(peer + " stopped reading: a frame of " + frameBytes + " bytes was not taken within "
                        + Duration.ofNanos(writeTimeoutNanos).toSeconds() + " s");
            }
            await(writable, left);
        }
    }

    /** Reads exactly {@code dst}'s remaining bytes; fails when none arrive for the read timeout. */
    private void readFully(ByteBuffer dst) throws IOException {
        long progress = System.nanoTime();
        while (dst.hasRemaining()) {
            int n = channel.read(dst);
            if (n > 0) {
                progress = System.nanoTime();
                continue;
            }
            if (n < 0) {
                throw new EOFException(peer + " closed the connection");
            }
            long timeout = readTimeoutNanos;
            long left = timeout - (System.nanoTime() - progress);
            if (timeout > 0 && left <= 0) {
                throw new SocketTimeoutException(peer + " sent nothing for " + Duration.ofNanos(timeout).toMillis() + " ms");
            }
            await(readable, timeout == 0 ? 0 : left);
        }
    }

    /**
     * Waits until {@code selector}'s channel is ready, at most {@code nanos} (0: until ready or the
     * link is closed). A {@link #close} from another thread ends the wait.
     */
    private void await(Selector selector, long nanos) throws IOException {
        try {
            if (nanos == 0) {
                selector.select();
            } else {
                selector.select(Math.max(1, nanos / 1_000_000));
            }
            selector.selectedKeys().clear();
        } catch (ClosedSelectorException e) {
            throw new AsynchronousCloseException();
        }
        if (!channel.isOpen()) {
            throw new AsynchronousCloseException();
        }
        if (Thread.currentThread().isInterrupted()) {
            throw new InterruptedIOException("interrupted while waiting for " + peer);
        }
    }

    /**
     * Receives one frame into {@link #buffer()}; returns its length. The frame must carry {@code op}
     * (any if negative) and {@code length} bytes (any up to {@code maxLength} if negative); both are
     * checked before the payload is read or room is made for it.
     */
    int receive(long op, int length, int maxLength) throws IOException {
        int n = receiveHeader(op, length, maxLength);
        if (buffer.length < n) {
            buffer = new byte[n];
        }
        receivePayload(ByteBuffer.wrap(buffer, 0, n));
        return n;
    }

    /**
     * Receives one frame of {@code op} whose payload is exactly {@code into}'s remaining bytes,
     * straight into {@code into} (for a direct buffer, without a copy through the heap); its
     * position ends at its limit. The length is checked before any payload byte is read. On an
     * error {@code into} may hold part of a payload that failed authentication.
     */
    void receive(long op, ByteBuffer into) throws IOException {
        receiveHeader(op, into.remaining(), into.remaining());
        receivePayload(into);
    }

    /**
     * Reads the next frame's header, of op {@code op} (any if negative) and {@code length} bytes
     * (any up to {@code maxLength} if negative), and returns its length; {@link #incomingOp} gives
     * its op. Both are checked before anything past the header is read, so a caller can check the
     * op too before making room for the payload, which it then reads with {@link #receivePayload}.
     */
    int receiveHeader(long op, int length, int maxLength) throws IOException {
        receiveHeader.clear().position(Long.BYTES);
        readFully(receiveHeader);
        long theirOp = receiveHeader.getLong(Long.BYTES);
        int n = receiveHeader.getInt(2 * Long.BYTES);
        if ((op >= 0 && theirOp != op) || (length >= 0 && n != length)) {
            throw new Unexpected(peer + " sent operation " + theirOp + " of " + n + " bytes where operation " + (op >= 0 ? op : "any")
                    + " of " + (length >= 0 ? length : "up to " + maxLength) + " bytes was due (out of step)");
        }
        if (n < 0 || n > maxLength) {
            throw new Unexpected(peer + " announced a frame of " + n + " bytes; at most " + maxLength + " are allowed here");
        }
        incomingOp = theirOp;
        incomingLength = n;
        return n;
    }

    /** The op of the frame whose header {@link #receiveHeader} read last (not yet authenticated). */
    long incomingOp() {
        return incomingOp;
    }

    /**
     * Reads the payload of the frame whose header {@link #receiveHeader} read, exactly
     * {@code into}'s remaining bytes (which must be its length), and checks its tag.
     */
    void receivePayload(ByteBuffer into) throws IOException {
        int n = into.remaining();
        if (n != incomingLength) {
            throw new IllegalArgumentException("the frame from " + peer + " holds " + incomingLength + " bytes, not " + n);
        }
        receiveHeader.putLong(0, received);
        receiveMac.update(receiveHeader.array());
        ByteBuffer chunk = into.duplicate();
        int start = into.position();
        for (int p = 0; p < n; p += CHUNK) {
            int c = Math.min(CHUNK, n - p);
            chunk.limit(start + p + c).position(start + p);
            readFully(chunk);
            chunk.position(start + p);
            receiveMac.update(chunk);
        }
        into.position(into.limit());
        readFully(ByteBuffer.wrap(receivedTag));
        try {
            receiveMac.doFinal(expectedTag, 0);
        } catch (ShortBufferException e) {
            throw new IllegalStateException(e);
        }
        if (!MessageDigest.isEqual(expectedTag, receivedTag)) {
            throw new Tampered("frame " + received + " (operation " + incomingOp + ", " + n + " bytes) from " + peer
                    + " failed authentication: it was altered on the way or was not sent by the peer this connection authenticated");
        }
        received++;
        lastOp = incomingOp;
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
        // Closing the selectors too wakes a thread waiting in either and lets the socket really close.
        for (java.io.Closeable c : new java.io.Closeable[] {channel, readable, writable}) {
            try {
                c.close();
            } catch (IOException ignored) {
                // closing to stop both directions; nothing more to do
            }
        }
    }
}
