package org.kindling.collective;

import java.io.EOFException;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.SocketTimeoutException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

/**
 * Collectives between the workers of a run over TCP, in a ring: each worker sends to the next
 * rank and receives from the previous one, over connections authenticated with the run's secret.
 * {@link #allReduce} is the bandwidth-optimal reduce-scatter + all-gather: every rank sends
 * 2·(W−1)/W of the data, and each chunk's sum is formed once, in ring order, then copied to every
 * rank, so all ranks end with bit-identical results and reruns repeat them bit for bit. The values
 * travel as IEEE 754 floats in little-endian byte order, sent from and received into direct buffers
 * ({@link #allocateFloats}) with no conversion between floats and bytes.
 *
 * <p>Every transfer is a {@link Link} frame carrying an operation counter and its length, MACed
 * with the connection's session key, so ranks that fall out of step fail loudly and a frame altered
 * on the way fails the run naming the peer it came from. A peer that sends nothing, or stops
 * reading, for the timeout fails the collective with an error naming it. Not thread-safe: one
 * thread issues the collectives, in the same order on every rank.
 */
public final class Ring implements AutoCloseable {
    /** Where a rank listens. */
    public record Peer(String host, int port) {
    }

    static final String PURPOSE = "kindling-ring";
    /** The largest payload {@link #allGather} takes from one rank (it carries small per-step values). */
    public static final int MAX_GATHER_BYTES = 16 << 20;
    /** The op of the first frame on a ring connection, in which the connecting rank announces itself. */
    static final long HELLO = Long.MAX_VALUE;
    private static final System.Logger LOG = System.getLogger(Ring.class.getName());

    /**
     * A rank's listening socket: it accepts and authenticates from the moment it opens (see
     * {@link Gate}), so strangers that connect before the ring forms are refused at once, and
     * holds the authenticated connections until {@link #connect} takes the one from the previous rank.
     */
    public static final class Listener implements AutoCloseable {
        private final int rank;
        private final RunSecret secret;
        private final String purpose;
        private final Peer address;
        private final Arrivals arrivals;

        private Listener(int rank, String host, RunSecret secret, String purpose) throws IOException {
            this.rank = rank;
            this.secret = secret;
            this.purpose = purpose;
            this.arrivals = new Arrivals(label(rank, purpose), host, secret, purpose, 4,
                    "too many are waiting to announce their rank");
            this.address = new Peer(host, arrivals.address().getPort());
            LOG.log(System.Logger.Level.INFO, label(rank, purpose) + " listening on " + host + ":" + address.port());
        }

        /** "rank R ring", naming the ring when it is not the run's main one. */
        private static String label(int rank, String purpose) {
            return "rank " + rank + " ring" + (purpose.equals(PURPOSE) ? "" : " " + purpose);
        }

        /** The address other ranks reach this one at. */
        public Peer address() {
            return address;
        }

        /** Connections refused so far (see {@link Gate#refused}). */
        public int refused() {
            return arrivals.refused();
        }

        /** Waits for rank {@code expected} to connect, authenticate and announce itself. */
        private Link await(int expected, String name, Duration timeout, long deadline) throws IOException {
            while (true) {
                long left = (deadline - System.nanoTime()) / 1_000_000;
                if (left <= 0) {
                    throw new SocketTimeoutException("rank " + rank + ": rank " + expected + " did not connect to the ring in time");
                }
                Arrivals.Arrival a = arrivals.poll(left, "rank " + rank + ": rank " + expected + " to connect");
                if (a == null) {
                    continue;
                }
                Link link = new Link(a.socket(), a.session(), name, timeout);
                try {
                    link.readTimeout(Duration.ofMillis(Math.min(left, 10_000)));
                    link.receive(HELLO, Integer.BYTES, Integer.BYTES);
                    int from = ByteBuffer.wrap(link.buffer()).getInt(0);
                    if (from != expected) {
                        throw new Handshake.Refused("announced rank " + from + " where rank " + expected + " belongs");
                    }
                    return link;
                } catch (IOException e) {
                    LOG.log(System.Logger.Level.WARNING, "rank " + rank + " ring refused an authenticated connection from "
                            + a.socket().getRemoteSocketAddress() + ": " + e.getMessage());
                    link.close();
                }
            }
        }

        @Override
        public void close() {
            arrivals.close();
        }
    }

    private final int rank;
    private final int world;
    private final Duration timeout;
    private final Link toNext;
    private final Link fromPrev;
    private final ExecutorService sender;
    private long op;
    /** The float[] form of {@link #allReduce}'s values, and the chunk a reduce-scatter step receives. */
    private ByteBuffer staging = allocateFloats(0);
    private ByteBuffer received = allocateFloats(0);

    private Ring(int rank, List<Peer> peers, Duration timeout, Link toNext, Link fromPrev) {
        this.rank = rank;
        this.world = peers.size();
        this.timeout = timeout;
        this.toNext = toNext;
        this.fromPrev = fromPrev;
        this.sender = world == 1 ? null : Executors.newSingleThreadExecutor(r -> {
            Thread t = new Thread(r, "kindling-ring-send-" + rank);
            t.setDaemon(true);
            return t;
        });
    }

    /**
     * Opens rank {@code rank}'s listening socket on {@code host} (the address Spark advertises for
     * this process, never every interface), on a free port, for {@link #connect}.
     */
    public static Listener listen(int rank, String host, RunSecret secret) throws IOException {
        return new Listener(rank, host, secret, PURPOSE);
    }

    /**
     * As {@link #listen(int, String, RunSecret)}, for a ring of the run other than its main one
     * (e.g. the replicas of one pipeline stage), named by {@code group}: its ranks authenticate for
     * that ring only, so a rank of another cannot join it by mistake.
     */
    public static Listener listen(int rank, String host, RunSecret secret, String group) throws IOException {
        return new Listener(rank, host, secret, PURPOSE + "/" + group);
    }

    /**
     * Joins the ring: connects to rank+1 and takes rank−1's connection from {@code listener}
     * (which {@link #connect} closes), both authenticated with the listener's secret. Fails if the
     * ring is not complete within {@code timeout}, which also bounds every later read and write.
     */
    public static Ring connect(int rank, List<Peer> peers, Listener listener, Duration timeout) throws IOException {
        int world = peers.size();
        if (rank < 0 || rank >= world) {
            throw new IllegalArgumentException("rank " + rank + " is not in [0, " + world + ")");
        }
        if (listener.rank != rank) {
            throw new IllegalArgumentException("rank " + rank + " cannot join the ring with rank " + listener.rank + "'s listener");
        }
        if (world == 1) {
            listener.close();
            return new Ring(rank, peers, timeout, null, null);
        }
        int next = (rank + 1) % world;
        int prev = (rank - 1 + world) % world;
        long deadline = System.nanoTime() + timeout.toNanos();
        Link to = null;
        Link from = null;
        try (listener) {
            Peer p = peers.get(next);
            try {
                to = Link.dial(p.host(), p.port(), listener.secret, listener.purpose, name(next, peers), timeout, deadline);
                to.send(HELLO, ByteBuffer.allocate(Integer.BYTES).putInt(rank).array(), 0, Integer.BYTES);
            } catch (IOException e) {
                throw new IOException("rank " + rank + " could not join the ring: " + e.getMessage(), e);
            }
            from = listener.await(prev, name(prev, peers), timeout, deadline);
            to.readTimeout(timeout);
            from.readTimeout(timeout);
            Ring ring = new Ring(rank, peers, timeout, to, from);
            to = null;
            from = null;
            return ring;
        } finally {
            for (Link l : new Link[] {to, from}) {
                if (l != null) {
                    l.close();
                }
            }
        }
    }

    private static String name(int rank, List<Peer> peers) {
        return "rank " + rank + " (" + peers.get(rank).host() + ":" + peers.get(rank).port() + ")";
    }

    /**
     * A ring of {@code world} ranks inside this process, over loopback, with a fresh secret: for
     * benchmarks and tests of the collectives. The caller closes every ring.
     */
    public static List<Ring> loopback(int world, Duration timeout) throws IOException {
        RunSecret secret = RunSecret.generate();
        List<Listener> listeners = new ArrayList<>();
        List<Peer> peers = new ArrayList<>();
        ExecutorService pool = Executors.newFixedThreadPool(world);
        try {
            for (int r = 0; r < world; r++) {
                Listener l = listen(r, "127.0.0.1", secret);
                listeners.add(l);
                peers.add(l.address());
            }
            List<Future<Ring>> rings = new ArrayList<>();
            for (int r = 0; r < world; r++) {
                int rank = r;
                rings.add(pool.submit(() -> connect(rank, peers, listeners.get(rank), timeout)));
            }
            List<Ring> out = new ArrayList<>();
            for (Future<Ring> f : rings) {
                out.add(f.get());
            }
            return out;
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IOException("interrupted while forming a loopback ring", e);
        } catch (ExecutionException e) {
            throw new IOException("cannot form a loopback ring: " + e.getCause().getMessage(), e.getCause());
        } finally {
            pool.shutdownNow();
            listeners.forEach(Listener::close);
        }
    }

    public int rank() {
        return rank;
    }

    public int world() {
        return world;
    }

    /** How long any one read, write or connection of this ring may take. */
    public Duration timeout() {
        return timeout;
    }

    /**
     * A direct buffer of {@code count} floats in little-endian order (the wire's), for
     * {@link #allReduce(ByteBuffer, int, int)}.
     */
    public static ByteBuffer allocateFloats(int count) {
        if (count < 0) {
            throw new IllegalArgumentException("a float buffer cannot hold " + count + " floats");
        }
        return ByteBuffer.allocateDirect(Math.multiplyExact(count, Float.BYTES)).order(ByteOrder.LITTLE_ENDIAN);
    }

    /**
     * Replaces {@code data[off, off+len)} by its element-wise sum over all ranks, through one
     * staging buffer: use {@link #allReduce(ByteBuffer, int, int)} to skip that copy.
     */
    public void allReduce(float[] data, int off, int len) {
        java.util.Objects.checkFromIndexSize(off, len, data.length);
        if (world == 1 || len == 0) {
            return;
        }
        if (staging.capacity() < (long) len * Float.BYTES) {
            staging = allocateFloats(len);
        }
        staging.clear();
        FloatBuffer f = staging.asFloatBuffer();
        f.put(data, off, len);
        allReduce(staging, 0, len);
        f.get(0, data, off, len);
    }

    /**
     * Replaces floats {@code [off, off+len)} of {@code data} (indices in floats, regardless of its
     * position and limit) by their element-wise sum over all ranks, in chunks of even size
     * ({@link #allReduce(ByteBuffer, int[])}). {@code data} must be a direct little-endian buffer
     * ({@link #allocateFloats}): its bytes go to the socket and come back into it as they are.
     */
    public void allReduce(ByteBuffer data, int off, int len) {
        java.util.Objects.checkFromIndexSize(off, len, data.capacity() / Float.BYTES);
        if (len == 0) {
            checkChunks(data, new int[world + 1], "allReduce");
            return;
        }
        int[] bounds = new int[world + 1];
        for (int i = 0; i <= world; i++) {
            bounds[i] = off + (int) ((long) len * i / world);
        }
        allReduce(data, bounds);
    }

    /**
     * Replaces floats {@code [bounds[0], bounds[world])} of {@code data} by their element-wise sum
     * over all ranks: a {@link #reduceScatter} over these chunks, then an {@link #allGather}. An
     * element's sum depends on which chunk holds it (the ring adds a chunk's terms starting from a
     * rank of its own), so the same bounds give the same bits as a reduce-scatter.
     */
    public void allReduce(ByteBuffer data, int[] bounds) {
        reduceScatter(data, bounds);
        allGather(data, bounds);
    }

    /**
     * Leaves rank {@code r}'s chunk, floats {@code [bounds[r], bounds[r+1])} of {@code data}, holding
     * its element-wise sum over all ranks, in {@code world - 1} ring steps; the rest of {@code data}
     * holds partial sums. {@code data} must be a direct little-endian buffer ({@link #allocateFloats}).
     */
    public void reduceScatter(ByteBuffer data, int[] bounds) {
        checkChunks(data, bounds, "reduceScatter");
        if (world == 1) {
            return;
        }
        int most = 0;
        for (int i = 0; i < world; i++) {
            most = Math.max(most, bounds[i + 1] - bounds[i]);
        }
        if (received.capacity() < most * Float.BYTES) {
            received = allocateFloats(most);
        }
        FloatBuffer sums = data.duplicate().clear().order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer();
        FloatBuffer got = received.duplicate().clear().order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer();
        // Chunk c starts at rank c + 1 and gains a term per step, so its last addition lands on rank c.
        for (int s = 0; s < world - 1; s++) {
            int send = Math.floorMod(rank - 1 - s, world);
            int recv = Math.floorMod(rank - 2 - s, world);
            int n = bounds[recv + 1] - bounds[recv];
            ByteBuffer out = floats(data, bounds[send], bounds[send + 1]);
            ByteBuffer in = received.clear().limit(n * Float.BYTES);
            exchange(id -> toNext.send(id, out), id -> fromPrev.receive(id, in), "reduce-scatter");
            int base = bounds[recv];
            for (int i = 0; i < n; i++) {
                sums.put(base + i, sums.get(base + i) + got.get(i));
            }
        }
    }

    /**
     * Every rank's floats {@code [bounds[r], bounds[r+1])} (its own, for rank {@code r}) of
     * {@code data} into every rank's {@code data}, in {@code world - 1} ring steps.
     * {@code data} must be a direct little-endian buffer ({@link #allocateFloats}).
     */
    public void allGather(ByteBuffer data, int[] bounds) {
        checkChunks(data, bounds, "allGather");
        // Rank r starts with chunk r whole and passes each chunk on as it arrives.
        for (int s = 0; s < world - 1; s++) {
            int send = Math.floorMod(rank - s, world);
            int recv = Math.floorMod(rank - s - 1, world);
            ByteBuffer out = floats(data, bounds[send], bounds[send + 1]);
            ByteBuffer in = floats(data, bounds[recv], bounds[recv + 1]);
            exchange(id -> toNext.send(id, out), id -> fromPrev.receive(id, in), "all-gather");
        }
    }

    /** {@code data} is the wire's kind of buffer and {@code bounds} are world + 1 ordered float offsets within it. */
    private void checkChunks(ByteBuffer data, int[] bounds, String op) {
        if (!data.isDirect() || data.order() != ByteOrder.LITTLE_ENDIAN) {
            throw new IllegalArgumentException(op + " needs a direct little-endian buffer (Ring.allocateFloats), got " + data);
        }
        if (bounds.length != world + 1 || bounds[0] < 0 || bounds[world] > data.capacity() / Float.BYTES) {
            throw new IllegalArgumentException(op + " needs " + (world + 1) + " bounds within the buffer's "
                    + data.capacity() / Float.BYTES + " floats, got " + Arrays.toString(bounds));
        }
        for (int i = 0; i < world; i++) {
            if (bounds[i] > bounds[i + 1]) {
                throw new IllegalArgumentException(op + " bounds must not decrease, got " + Arrays.toString(bounds));
            }
        }
    }

    /** The bytes of floats {@code [from, to)} of {@code data}, as a buffer of their own (the byte order does not matter for moving them). */
    private static ByteBuffer floats(ByteBuffer data, int from, int to) {
        return data.duplicate().limit(to * Float.BYTES).position(from * Float.BYTES);
    }

    /** Every rank's {@code mine} (at most {@link #MAX_GATHER_BYTES}), indexed by rank. */
    public byte[][] allGather(byte[] mine) {
        if (mine.length > MAX_GATHER_BYTES) {
            throw new IllegalArgumentException("allGather takes at most " + MAX_GATHER_BYTES + " bytes per rank, got " + mine.length);
        }
        byte[][] all = new byte[world][];
        all[rank] = mine.clone();
        int[] got = new int[1];
        for (int s = 0; s < world - 1; s++) {
            int send = Math.floorMod(rank - s, world);
            int recv = Math.floorMod(rank - s - 1, world);
            byte[] out = all[send];
            exchange(id -> toNext.send(id, out, 0, out.length), id -> got[0] = fromPrev.receive(id, -1, MAX_GATHER_BYTES), "all-gather");
            all[recv] = Arrays.copyOf(fromPrev.buffer(), got[0]);
        }
        return all;
    }

    /** One side of an {@link #exchange}, given the operation number both sides' frames carry. */
    private interface Transfer {
        void run(long op) throws IOException;
    }

    /**
     * Sends to the next rank (on the sender thread) while receiving from the previous one, both
     * frames carrying the next operation number; a failure of either closes the ring and is
     * raised naming the peer and the phase.
     */
    private void exchange(Transfer send, Transfer receive, String phase) {
        long id = op++;
        Future<?> sent = sender.submit(() -> {
            send.run(id);
            return null;
        });
        int prev = Math.floorMod(rank - 1, world);
        int next = (rank + 1) % world;
        String during = " during " + phase + " (operation " + id + ")";
        try {
            receive.run(id);
            // The write's own deadline ends it; this margin only covers a slow scheduler.
            sent.get(timeout.toMillis() + 10_000, TimeUnit.MILLISECONDS);
        } catch (SocketTimeoutException e) {
            close();
            throw new CollectiveTimeoutException("rank " + rank + ": " + fromPrev.peer() + " sent nothing for " + timeout.toSeconds()
                    + " s" + during + "; it is stalled or dead (the timeout is spark.kindling.timeout.collective)", e);
        } catch (EOFException e) {
            close();
            throw new PeerFailureException("rank " + rank + ": rank " + prev + " closed the ring" + during
                    + "; it failed or was stopped", e);
        } catch (Link.Unexpected e) {
            close();
            throw new UncheckedIOException("rank " + rank + ": ring out of step: " + e.getMessage() + during, e);
        } catch (IOException e) {
            close();
            throw new UncheckedIOException("rank " + rank + ": " + phase + " failed: " + e.getMessage(), e);
        } catch (ExecutionException e) {
            close();
            if (e.getCause() instanceof Link.WriteTimeout w) {
                throw new CollectiveTimeoutException("rank " + rank + ": " + w.getMessage() + during
                        + "; it is stalled or dead (the timeout is spark.kindling.timeout.collective)", w);
            }
            throw new UncheckedIOException(new IOException("rank " + rank + ": sending to rank " + next + " failed" + during + ": "
                    + e.getCause().getMessage(), e.getCause()));
        } catch (TimeoutException e) {
            close();
            throw new CollectiveTimeoutException("rank " + rank + ": sending to " + toNext.peer() + " did not finish within "
                    + timeout.toSeconds() + " s" + during + "; it is stalled or dead", e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            close();
            throw new UncheckedIOException(new IOException("rank " + rank + ": interrupted" + during, e));
        }
    }

    @Override
    public void close() {
        if (world == 1) {
            return;
        }
        sender.shutdownNow();
        toNext.close();
        fromPrev.close();
    }
}
