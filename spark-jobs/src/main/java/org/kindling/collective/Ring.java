package org.kindling.collective;

import java.io.EOFException;
import java.io.IOException;
import java.io.InterruptedIOException;
import java.io.UncheckedIOException;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
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
 * rank, so all ranks end with bit-identical results and reruns repeat them bit for bit.
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
        private final Peer address;
        private final BlockingQueue<Arrival> arrivals = new ArrayBlockingQueue<>(4);
        private final Gate gate;

        private record Arrival(Socket socket, Handshake.Session session) {
        }

        private Listener(int rank, String host, RunSecret secret) throws IOException {
            this.rank = rank;
            this.secret = secret;
            this.gate = new Gate("rank " + rank + " ring", host, secret, PURPOSE, (socket, session) -> {
                if (!arrivals.offer(new Arrival(socket, session))) {
                    LOG.log(System.Logger.Level.WARNING, "rank " + rank + " ring dropped an authenticated connection from "
                            + socket.getRemoteSocketAddress() + ": too many are waiting to announce their rank");
                    close(socket);
                }
            });
            this.address = new Peer(host, gate.address().getPort());
            LOG.log(System.Logger.Level.INFO, "rank " + rank + " ring listening on " + host + ":" + address.port());
        }

        /** The address other ranks reach this one at. */
        public Peer address() {
            return address;
        }

        /** Connections refused so far (see {@link Gate#refused}). */
        public int refused() {
            return gate.refused();
        }

        /** Waits for rank {@code expected} to connect, authenticate and announce itself. */
        private Link await(int expected, String name, Duration timeout, long deadline) throws IOException {
            while (true) {
                long left = (deadline - System.nanoTime()) / 1_000_000;
                if (left <= 0) {
                    throw new SocketTimeoutException("rank " + rank + ": rank " + expected + " did not connect to the ring in time");
                }
                Arrival a;
                try {
                    a = arrivals.poll(left, TimeUnit.MILLISECONDS);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    throw new InterruptedIOException("rank " + rank + ": interrupted while waiting for rank " + expected);
                }
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
            gate.close();
            for (Arrival a; (a = arrivals.poll()) != null; ) {
                close(a.socket());
            }
        }

        private static void close(Socket s) {
            try {
                s.close();
            } catch (IOException ignored) {
                // refusing either way
            }
        }
    }

    private final int rank;
    private final int world;
    private final Duration timeout;
    private final Link toNext;
    private final Link fromPrev;
    private final ExecutorService sender;
    private long op;
    private byte[] sendBuf = new byte[0];
    private float[] recvFloats = new float[0];

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
        return new Listener(rank, host, secret);
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
                to = Link.dial(p.host(), p.port(), listener.secret, PURPOSE, name(next, peers), timeout, deadline);
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

    /** Replaces {@code data[off, off+len)} by its element-wise sum over all ranks. */
    public void allReduce(float[] data, int off, int len) {
        if (world == 1 || len == 0) {
            return;
        }
        int[] bounds = new int[world + 1];
        for (int i = 0; i <= world; i++) {
            bounds[i] = off + (int) ((long) len * i / world);
        }
        for (int s = 0; s < world - 1; s++) {
            int send = Math.floorMod(rank - s, world);
            int recv = Math.floorMod(rank - s - 1, world);
            int n = bounds[recv + 1] - bounds[recv];
            exchangeFloats(data, bounds[send], bounds[send + 1] - bounds[send], n, "reduce-scatter");
            float[] got = recvFloats;
            int base = bounds[recv];
            for (int i = 0; i < n; i++) {
                data[base + i] += got[i];
            }
        }
        for (int s = 0; s < world - 1; s++) {
            int send = Math.floorMod(rank + 1 - s, world);
            int recv = Math.floorMod(rank - s, world);
            int n = bounds[recv + 1] - bounds[recv];
            exchangeFloats(data, bounds[send], bounds[send + 1] - bounds[send], n, "all-gather");
            System.arraycopy(recvFloats, 0, data, bounds[recv], n);
        }
    }

    /** Every rank's {@code mine} (at most {@link #MAX_GATHER_BYTES}), indexed by rank. */
    public byte[][] allGather(byte[] mine) {
        if (mine.length > MAX_GATHER_BYTES) {
            throw new IllegalArgumentException("allGather takes at most " + MAX_GATHER_BYTES + " bytes per rank, got " + mine.length);
        }
        byte[][] all = new byte[world][];
        all[rank] = mine.clone();
        for (int s = 0; s < world - 1; s++) {
            int send = Math.floorMod(rank - s, world);
            int recv = Math.floorMod(rank - s - 1, world);
            int n = exchange(all[send], all[send].length, -1, "all-gather");
            all[recv] = Arrays.copyOf(fromPrev.buffer(), n);
        }
        return all;
    }

    private void exchangeFloats(float[] data, int from, int count, int expect, String phase) {
        int bytes = count * Float.BYTES;
        if (sendBuf.length < bytes) {
            sendBuf = new byte[bytes];
        }
        ByteBuffer.wrap(sendBuf, 0, bytes).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().put(data, from, count);
        exchange(sendBuf, bytes, expect * Float.BYTES, phase);
        if (recvFloats.length < expect) {
            recvFloats = new float[expect];
        }
        ByteBuffer.wrap(fromPrev.buffer(), 0, expect * Float.BYTES).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer()
                .get(recvFloats, 0, expect);
    }

    /**
     * Sends {@code len} bytes to the next rank while receiving from the previous one into
     * {@code fromPrev.buffer()}; returns the received length. {@code expect} -1 accepts any length
     * up to {@link #MAX_GATHER_BYTES}.
     */
    private int exchange(byte[] send, int len, int expect, String phase) {
        long id = op++;
        Future<?> sent = sender.submit(() -> {
            toNext.send(id, send, 0, len);
            return null;
        });
        int prev = Math.floorMod(rank - 1, world);
        int next = (rank + 1) % world;
        String during = " during " + phase + " (operation " + id + ")";
        try {
            int n = fromPrev.receive(id, expect, expect >= 0 ? expect : MAX_GATHER_BYTES);
            // The write's own deadline (the link's watchdog) ends it; this margin only covers a slow scheduler.
            sent.get(timeout.toMillis() + 10_000, TimeUnit.MILLISECONDS);
            return n;
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
