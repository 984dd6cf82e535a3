package org.kindling.collective;

import java.io.EOFException;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.InetSocketAddress;
import java.net.SocketTimeoutException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.time.Duration;

/**
 * The connection between two adjacent pipeline stages: activations flow from stage s to stage s+1,
 * gradients back from s+1 to s, over one TCP connection with the ring's rules. The downstream
 * stage {@link #listen}s on its advertised host (a {@link Gate}: bounded pre-authentication, never
 * the wildcard address), the upstream one {@link #connect}s; the {@link Handshake}'s purpose names
 * the two stages and the direction, so a stage of another pair, of another run or the wrong way
 * round is refused before any frame. Every frame is a {@link Link} frame (HMAC-SHA256 under the
 * connection's per-direction key), whose op carries the frame's {@link Kind} and micro-batch id
 * and whose length is its payload: IEEE 754 floats, little-endian, sent from and received into
 * direct buffers ({@link Ring#allocateFloats}).
 *
 * <p>A received header is checked (known kind, flowing this way, micro-batch id ≥ 0, whole floats,
 * at most the cap given at construction) before room is made for its payload. Every wait has a
 * deadline. One thread may send while another receives; sends are serialized among themselves,
 * as are receives. After any error the link is closed and unusable.
 */
public final class StageLink implements AutoCloseable {
    /** What a frame carries. */
    public enum Kind {
        /** A micro-batch's activations, upstream to downstream. */
        ACTIVATION(1, true, false),
        /** The gradient of a micro-batch's activations, downstream to upstream. */
        GRADIENT(2, false, true),
        /** No more frames follow from this side (no payload; the id is the sender's to choose, e.g. the micro-batches sent). */
        END(3, true, true),
        /** The sender failed and stops (no payload; the id names the micro-batch it was at). */
        ABORT(4, true, true);

        final int code;
        final boolean forward;
        final boolean backward;

        Kind(int code, boolean forward, boolean backward) {
            this.code = code;
            this.forward = forward;
            this.backward = backward;
        }

        /** Whether frames of this kind carry floats (control kinds carry none). */
        public boolean carriesData() {
            return this == ACTIVATION || this == GRADIENT;
        }

        static Kind of(long code) {
            for (Kind k : values()) {
                if (k.code == code) {
                    return k;
                }
            }
            return null;
        }

        String label() {
            return name().toLowerCase(java.util.Locale.ROOT);
        }
    }

    /**
     * A received frame. {@code payload} is a little-endian view (position 0, limit its bytes) of
     * the link's direct receive buffer: valid until the next receive on this link.
     */
    public record Frame(Kind kind, int microBatch, ByteBuffer payload) {
        /** How many floats the payload holds. */
        public int floats() {
            return payload.remaining() / Float.BYTES;
        }
    }

    /** What crossed the link so far: payload bytes and frames each way, and the time spent in sends and receives. */
    public record Metrics(long messagesSent, long bytesSent, long messagesReceived, long bytesReceived, long sendNanos, long receiveNanos) {
    }

    /** The largest per-message cap: its bytes must fit a frame's length. */
    public static final int MAX_FLOATS_LIMIT = Integer.MAX_VALUE / Float.BYTES;
    private static final System.Logger LOG = System.getLogger(StageLink.class.getName());
    /** The payload of frames without floats; never written to, so one serves every link. */
    private static final ByteBuffer NO_FLOATS = Ring.allocateFloats(0);

    /**
     * The handshake purpose of the link from stage {@code upstream} to {@code upstream + 1} of
     * pipeline replica {@code replica}: a stage that dials another replica's neighbour is refused.
     */
    static String purpose(int upstream, int replica) {
        return "kindling-stage-link/replica " + replica + ": activations " + upstream + "->" + (upstream + 1) + ", gradients "
                + (upstream + 1) + "->" + upstream;
    }

    /**
     * A downstream stage's listening socket: it accepts and authenticates from the moment it opens
     * (see {@link Gate}), and holds the upstream stage's connection until {@link #accept} takes it.
     */
    public static final class Listener implements AutoCloseable {
        private final int stage;
        private final Ring.Peer address;
        private final Arrivals arrivals;

        private Listener(int stage, int replica, String host, RunSecret secret) throws IOException {
            this.stage = stage;
            this.arrivals = new Arrivals("stage " + stage + " link", host, secret, purpose(stage - 1, replica), 2,
                    "stage " + (stage - 1) + " has connected already");
            this.address = new Ring.Peer(host, arrivals.address().getPort());
            LOG.log(System.Logger.Level.INFO, "stage " + stage + " link listening on " + host + ":" + address.port());
        }

        /** The address the upstream stage connects to. */
        public Ring.Peer address() {
            return address;
        }

        /** The socket address the listener is bound to. */
        InetSocketAddress bound() {
            return arrivals.address();
        }

        /** Connections refused so far (see {@link Gate#refused}). */
        public int refused() {
            return arrivals.refused();
        }

        /**
         * Waits up to {@code timeout} for the upstream stage to connect and authenticate, and
         * returns the link to it; closes this listener. {@code timeout} also bounds every later
         * write, and is the default wait of a receive.
         *
         * @param maxFloats the most floats one frame may carry, either way
         */
        public StageLink accept(int maxFloats, Duration timeout) throws IOException {
            checkCap(maxFloats);
            checkTimeout(timeout);
            try (this) {
                Arrivals.Arrival a = arrivals.poll(timeout.toMillis(), "stage " + stage + ": stage " + (stage - 1) + " to connect");
                if (a == null) {
                    throw new SocketTimeoutException("stage " + stage + ": stage " + (stage - 1) + " did not connect within "
                            + timeout.toMillis() + " ms");
                }
                String peer = "stage " + (stage - 1) + " (" + a.socket().getRemoteSocketAddress() + ")";
                try {
                    return new StageLink(stage, stage - 1, new Link(a.socket(), a.session(), peer, timeout), maxFloats, timeout);
                } catch (IOException e) {
                    Arrivals.close(a.socket());
                    throw e;
                }
            }
        }

        @Override
        public void close() {
            arrivals.close();
        }
    }

    /**
     * Opens the listening socket of downstream stage {@code stage} (≥ 1) of pipeline replica
     * {@code replica} on {@code advertisedHost} (the address Spark advertises for this process,
     * never every interface), on a free port.
     */
    public static Listener listen(int stage, int replica, String advertisedHost, RunSecret secret) throws IOException {
        if (stage < 1) {
            throw new IllegalArgumentException("stage " + stage + " has no upstream stage to listen for; downstream stages are 1 and up");
        }
        checkReplica(replica);
        return new Listener(stage, replica, advertisedHost, secret);
    }

    /**
     * Connects upstream stage {@code stage} (≥ 0) of pipeline replica {@code replica} to its stage {@code stage + 1} listening at
     * {@code downstream}, retrying while nothing listens there yet, and fails when the link is not
     * authenticated within {@code timeout}, which also bounds every later write and is the default
     * wait of a receive.
     *
     * @param maxFloats the most floats one frame may carry, either way
     */
    public static StageLink connect(int stage, int replica, Ring.Peer downstream, RunSecret secret, int maxFloats, Duration timeout)
            throws IOException {
        if (stage < 0) {
            throw new IllegalArgumentException("stage " + stage + " is not a pipeline stage (they start at 0)");
        }
        checkReplica(replica);
        checkCap(maxFloats);
        checkTimeout(timeout);
        String peer = "stage " + (stage + 1) + " (" + downstream.host() + ":" + downstream.port() + ")";
        long deadline = System.nanoTime() + timeout.toNanos();
        Link link;
        try {
            link = Link.dial(downstream.host(), downstream.port(), secret, purpose(stage, replica), peer, timeout, deadline);
        } catch (IOException e) {
            throw new IOException("stage " + stage + " could not link to the next stage: " + e.getMessage(), e);
        }
        return new StageLink(stage, stage + 1, link, maxFloats, timeout);
    }

    private static void checkReplica(int replica) {
        if (replica < 0) {
            throw new IllegalArgumentException("pipeline replica " + replica + " is not one (they start at 0)");
        }
    }

    private static void checkTimeout(Duration timeout) {
        if (timeout.isNegative() || timeout.isZero()) {
            throw new IllegalArgumentException("a stage link needs a positive timeout, got " + timeout);
        }
    }

    private static void checkCap(int maxFloats) {
        if (maxFloats < 0 || maxFloats > MAX_FLOATS_LIMIT) {
            throw new IllegalArgumentException("the floats per message of a stage link must be in [0, " + MAX_FLOATS_LIMIT + "], got "
                    + maxFloats);
        }
    }

    private final int stage;
    private final int peerStage;
    private final Link link;
    private final int maxFloats;
    private final Duration timeout;
    private final Object sendLock = new Object();
    private final Object receiveLock = new Object();
    private ByteBuffer incoming = Ring.allocateFloats(0);
    private volatile boolean closed;
    private volatile long messagesSent;
    private volatile long bytesSent;
    private volatile long sendNanos;
    private volatile long messagesReceived;
    private volatile long bytesReceived;
    private volatile long receiveNanos;

    private StageLink(int stage, int peerStage, Link link, int maxFloats, Duration timeout) {
        this.stage = stage;
        this.peerStage = peerStage;
        this.link = link;
        this.maxFloats = maxFloats;
        this.timeout = timeout;
        link.readTimeout(timeout);
    }

    /** This side's stage. */
    public int stage() {
        return stage;
    }

    /** The stage at the other end. */
    public int peerStage() {
        return peerStage;
    }

    /** The most floats one frame may carry. */
    public int maxFloats() {
        return maxFloats;
    }

    private boolean upstream() {
        return peerStage > stage;
    }

    /** Whether frames of {@code kind} may flow from the upstream side ({@code fromUpstream}) or the downstream one. */
    private boolean flows(Kind kind, boolean fromUpstream) {
        return fromUpstream ? kind.forward : kind.backward;
    }

    /** Sends a frame without floats: a control frame ({@link Kind#END}, {@link Kind#ABORT}) or an empty tensor. */
    public void send(Kind kind, int microBatch) {
        send(kind, microBatch, NO_FLOATS);
    }

    /**
     * Sends one frame of {@code payload}'s remaining bytes (whole floats), taken straight from
     * the buffer, which must be direct and little-endian ({@link Ring#allocateFloats}); its
     * position and limit are left as they were. A write the peer does not take within the
     * link's timeout fails it.
     */
    public void send(Kind kind, int microBatch, ByteBuffer payload) {
        if (!flows(kind, upstream())) {
            throw new IllegalArgumentException("stage " + stage + " cannot send " + kind.label() + " frames to stage " + peerStage
                    + ": they flow " + (kind.forward ? "downstream" : "upstream") + " only");
        }
        if (microBatch < 0) {
            throw new IllegalArgumentException("a micro-batch id must be >= 0, got " + microBatch);
        }
        if (!payload.isDirect() || payload.order() != ByteOrder.LITTLE_ENDIAN) {
            throw new IllegalArgumentException("a stage link sends from a direct little-endian buffer (Ring.allocateFloats), got " + payload);
        }
        int bytes = payload.remaining();
        if (bytes % Float.BYTES != 0) {
            throw new IllegalArgumentException("a stage link sends whole floats, got " + bytes + " bytes");
        }
        if (!kind.carriesData() && bytes > 0) {
            throw new IllegalArgumentException(kind.label() + " frames carry no floats, got " + bytes / Float.BYTES);
        }
        if (bytes / Float.BYTES > maxFloats) {
            throw new IllegalArgumentException("stage " + stage + ": a frame of " + bytes / Float.BYTES + " floats is above this link's cap of "
                    + maxFloats + " floats per message");
        }
        String what = kind.label() + " of micro-batch " + microBatch;
        synchronized (sendLock) {
            ensureOpen();
            long t0 = System.nanoTime();
            try {
                link.send(op(kind, microBatch), payload);
            } catch (IOException e) {
                throw failure(e, "sending the " + what);
            } finally {
                sendNanos += System.nanoTime() - t0;
            }
            messagesSent++;
            bytesSent += bytes;
        }
    }

    /** The next frame, whichever its kind and micro-batch, waiting up to the link's timeout. */
    public Frame receive() {
        return receive(timeout);
    }

    /**
     * The next frame, whichever its kind and micro-batch (a message-driven stage runs whatever
     * arrives first), waiting up to {@code wait} for it to begin and at most that long between its
     * bytes; a silent peer fails the link with an error naming it.
     */
    public Frame receive(Duration wait) {
        return receive(wait, "next frame");
    }

    /**
     * The next frame, which must be of {@code kind} and micro-batch {@code microBatch}: another
     * fails the link naming both, an {@link Kind#ABORT} as the peer's failure
     * ({@link PeerFailureException}), any other as out of step.
     */
    public Frame expect(Kind kind, int microBatch, Duration wait) {
        String what = kind.label() + " of micro-batch " + microBatch;
        Frame f = receive(wait, what);
        if (f.kind() == kind && f.microBatch() == microBatch) {
            return f;
        }
        close();
        if (f.kind() == Kind.ABORT) {
            throw new PeerFailureException("stage " + stage + ": " + link.peer() + " aborted (at micro-batch " + f.microBatch()
                    + ") while stage " + stage + " awaited the " + what, null);
        }
        String message = "stage " + stage + ": " + link.peer() + " sent the " + f.kind().label() + " of micro-batch " + f.microBatch()
                + " where the " + what + " was due (out of step)";
        throw new UncheckedIOException(message, new Link.Unexpected(message));
    }

    private Frame receive(Duration wait, String awaited) {
        if (wait.isNegative() || wait.isZero()) {
            throw new IllegalArgumentException("a receive needs a positive wait, got " + wait);
        }
        synchronized (receiveLock) {
            ensureOpen();
            long t0 = System.nanoTime();
            try {
                link.readTimeout(wait);
                int bytes = link.receiveHeader(-1, -1, maxFloats * Float.BYTES);
                long op = link.incomingOp();
                Kind kind = checkHeader(op, bytes);
                if (incoming.capacity() < bytes) {
                    incoming = Ring.allocateFloats(bytes / Float.BYTES);
                }
                ByteBuffer into = incoming.clear().limit(bytes);
                link.receivePayload(into);
                messagesReceived++;
                bytesReceived += bytes;
                return new Frame(kind, (int) op, into.flip().slice().order(ByteOrder.LITTLE_ENDIAN));
            } catch (IOException e) {
                throw failure(e, "awaiting the " + awaited);
            } finally {
                receiveNanos += System.nanoTime() - t0;
            }
        }
    }

    /** Checks a header before room is made for its payload; returns its kind. */
    private Kind checkHeader(long op, int bytes) throws Link.Unexpected {
        Kind kind = Kind.of(op >>> 32);
        int microBatch = (int) op;
        String from = link.peer();
        if (kind == null) {
            throw new Link.Unexpected(from + " sent a frame of unknown kind " + (op >>> 32));
        }
        if (!flows(kind, !upstream())) {
            throw new Link.Unexpected(from + " sent a frame of kind " + kind.label() + ", which flows " + (kind.forward ? "downstream" : "upstream")
                    + " only");
        }
        if (microBatch < 0) {
            throw new Link.Unexpected(from + " sent a frame of kind " + kind.label() + " for micro-batch " + microBatch + "; ids are >= 0");
        }
        if (bytes % Float.BYTES != 0 || (!kind.carriesData() && bytes > 0)) {
            throw new Link.Unexpected(from + " sent " + bytes + " bytes in a frame of kind " + kind.label() + ", which carries "
                    + (kind.carriesData() ? "whole floats" : "none"));
        }
        return kind;
    }

    private static long op(Kind kind, int microBatch) {
        return ((long) kind.code << 32) | microBatch;
    }

    private void ensureOpen() {
        if (closed) {
            throw new IllegalStateException("stage " + stage + ": the link to " + link.peer() + " is closed");
        }
    }

    /** Closes the link and turns {@code e} into the error the pipeline reports, naming this stage, the peer and what was under way. */
    private RuntimeException failure(IOException e, String during) {
        boolean wasClosed = closed;
        close();
        String at = "stage " + stage + ": ";
        if (e instanceof SocketTimeoutException) {
            return new CollectiveTimeoutException(at + e.getMessage() + " while " + during + "; it is stalled or dead", e);
        }
        if (e instanceof Link.WriteTimeout) {
            return new CollectiveTimeoutException(at + e.getMessage() + " while " + during + "; it is stalled or dead", e);
        }
        if (e instanceof EOFException) {
            return new PeerFailureException(at + link.peer() + " closed the link while " + during + "; it failed or was stopped", e);
        }
        if (wasClosed) {
            return new IllegalStateException(at + "the link to " + link.peer() + " was closed while " + during, e);
        }
        return new UncheckedIOException(at + e.getMessage() + " (while " + during + ")", e);
    }

    /** What crossed the link so far. */
    public Metrics metrics() {
        return new Metrics(messagesSent, bytesSent, messagesReceived, bytesReceived, sendNanos, receiveNanos);
    }

    /** Room the receive buffer holds now, in bytes (it grows only for frames whose header passed the checks). */
    int receiveCapacity() {
        return incoming.capacity();
    }

    /** Closes the connection; a send or receive waiting on another thread fails at once. */
    @Override
    public void close() {
        closed = true;
        link.close();
    }
}
