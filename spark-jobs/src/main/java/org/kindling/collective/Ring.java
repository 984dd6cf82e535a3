package org.kindling.collective;

import java.io.BufferedInputStream;
import java.io.BufferedOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.ConnectException;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;

/**
 * Collectives between the workers of a run over TCP, in a ring: each worker sends to the next
 * rank and receives from the previous one, over connections authenticated with the run's secret.
 * {@link #allReduce} is the bandwidth-optimal reduce-scatter + all-gather: every rank sends
 * 2·(W−1)/W of the data, and each chunk's sum is formed once, in ring order, then copied to every
 * rank, so all ranks end with bit-identical results and reruns repeat them bit for bit.
 *
 * <p>Every transfer is framed with an operation counter and length, so ranks that fall out of
 * step fail loudly. A peer that sends nothing for the timeout fails the collective with an
 * error naming it. Not thread-safe: one thread issues the collectives, in the same order on
 * every rank.
 */
public final class Ring implements AutoCloseable {
    /** Where a rank listens. */
    public record Peer(String host, int port) {
    }

    static final String PURPOSE = "kindling-ring";
    private static final System.Logger LOG = System.getLogger(Ring.class.getName());

    private final int rank;
    private final int world;
    private final List<Peer> peers;
    private final Duration timeout;
    private final Socket toNext;
    private final Socket fromPrev;
    private final DataOutputStream out;
    private final DataInputStream in;
    private final ExecutorService sender;
    private long op;
    private byte[] sendBuf = new byte[0];
    private byte[] recvBuf = new byte[0];
    private float[] recvFloats = new float[0];

    private Ring(int rank, List<Peer> peers, Duration timeout, Socket toNext, Socket fromPrev) throws IOException {
        this.rank = rank;
        this.world = peers.size();
        this.peers = List.copyOf(peers);
        this.timeout = timeout;
        this.toNext = toNext;
        this.fromPrev = fromPrev;
        if (world > 1) {
            this.out = new DataOutputStream(new BufferedOutputStream(toNext.getOutputStream(), 1 << 16));
            this.in = new DataInputStream(new BufferedInputStream(fromPrev.getInputStream(), 1 << 16));
            this.sender = Executors.newSingleThreadExecutor(r -> {
                Thread t = new Thread(r, "kindling-ring-send-" + rank);
                t.setDaemon(true);
                return t;
            });
        } else {
            this.out = null;
            this.in = null;
            this.sender = null;
        }
    }

    /** A listening socket on every interface, on a free port, for {@link #connect}. */
    public static ServerSocket listen() throws IOException {
        ServerSocket s = new ServerSocket();
        s.bind(new InetSocketAddress(0), 8);
        return s;
    }

    /**
     * Joins the ring: connects to rank+1 and accepts rank−1 on {@code server} (which
     * {@link #connect} closes), authenticating both with {@code secret}. Strangers that connect to
     * {@code server} are refused and logged. Fails if the ring is not complete within {@code timeout}.
     */
    public static Ring connect(int rank, List<Peer> peers, ServerSocket server, String secret, Duration timeout)
            throws IOException {
        int world = peers.size();
        if (rank < 0 || rank >= world) {
            throw new IllegalArgumentException("rank " + rank + " is not in [0, " + world + ")");
        }
        if (world == 1) {
            server.close();
            return new Ring(rank, peers, timeout, null, null);
        }
        int prev = (rank - 1 + world) % world;
        long deadline = System.nanoTime() + timeout.toNanos();
        ExecutorService acceptor = Executors.newSingleThreadExecutor();
        Future<Socket> accepted = acceptor.submit(() -> acceptPeer(server, secret, prev, deadline, rank));
        Socket next = null;
        Socket from = null;
        try {
            next = dial(peers.get((rank + 1) % world), secret, rank, deadline);
            from = accepted.get();
            next.setSoTimeout(millis(timeout));
            from.setSoTimeout(millis(timeout));
            Ring ring = new Ring(rank, peers, timeout, next, from);
            next = null;
            from = null;
            return ring;
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IOException("interrupted while joining the ring", e);
        } catch (ExecutionException e) {
            throw e.getCause() instanceof IOException io ? io : new IOException(e.getCause());
        } finally {
            acceptor.shutdownNow();
            server.close();
            for (Socket s : new Socket[] {next, from}) {
                if (s != null) {
                    s.close();
                }
            }
        }
    }

    /**
     * A ring of {@code world} ranks inside this process, over loopback, with a fresh secret: for
     * benchmarks and tests of the collectives. The caller closes every ring.
     */
    public static List<Ring> loopback(int world, Duration timeout) throws IOException {
        String secret = Handshake.newSecret();
        List<ServerSocket> servers = new java.util.ArrayList<>();
        List<Peer> peers = new java.util.ArrayList<>();
        for (int r = 0; r < world; r++) {
            ServerSocket s = listen();
            servers.add(s);
            peers.add(new Peer("127.0.0.1", s.getLocalPort()));
        }
        ExecutorService pool = Executors.newFixedThreadPool(world);
        try {
            List<Future<Ring>> rings = new java.util.ArrayList<>();
            for (int r = 0; r < world; r++) {
                int rank = r;
                rings.add(pool.submit(() -> connect(rank, peers, servers.get(rank), secret, timeout)));
            }
            List<Ring> out = new java.util.ArrayList<>();
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
        }
    }

    private static int millis(Duration d) {
        return (int) Math.max(1, Math.min(Integer.MAX_VALUE, d.toMillis()));
    }

    private static Socket dial(Peer peer, String secret, int rank, long deadline) throws IOException {
        while (true) {
            Socket s = new Socket();
            try {
                int left = (int) Math.max(1, (deadline - System.nanoTime()) / 1_000_000);
                s.connect(new InetSocketAddress(peer.host(), peer.port()), left);
                s.setSoTimeout(left);
                s.setTcpNoDelay(true);
                Handshake.connect(s, secret, PURPOSE);
                DataOutputStream o = new DataOutputStream(s.getOutputStream());
                o.writeInt(rank);
                o.flush();
                return s;
            } catch (ConnectException e) {
                s.close();
                if (System.nanoTime() > deadline) {
                    throw new IOException("rank " + rank + " could not reach the next rank at " + peer.host() + ":"
                            + peer.port() + ": " + e.getMessage(), e);
                }
                sleep(100);
            } catch (IOException e) {
                s.close();
                throw new IOException("rank " + rank + " could not join the ring at " + peer.host() + ":" + peer.port() + ": "
                        + e.getMessage(), e);
            }
        }
    }

    private static Socket acceptPeer(ServerSocket server, String secret, int expected, long deadline, int rank)
            throws IOException {
        while (true) {
            int left = (int) ((deadline - System.nanoTime()) / 1_000_000);
            if (left <= 0) {
                throw new SocketTimeoutException("rank " + rank + ": rank " + expected + " did not connect to the ring in time");
            }
            server.setSoTimeout(left);
            Socket s;
            try {
                s = server.accept();
            } catch (SocketTimeoutException e) {
                throw new SocketTimeoutException("rank " + rank + ": rank " + expected + " did not connect to the ring in time");
            }
            try {
                s.setSoTimeout(Math.max(1, Math.min(left, 10_000)));
                s.setTcpNoDelay(true);
                Handshake.accept(s, secret, PURPOSE);
                int from = new DataInputStream(s.getInputStream()).readInt();
                if (from != expected) {
                    throw new Handshake.Refused("announced rank " + from + " where rank " + expected + " belongs");
                }
                return s;
            } catch (IOException e) {
                LOG.log(System.Logger.Level.WARNING, "ring rank " + rank + " refused a connection from "
                        + s.getRemoteSocketAddress() + ": " + e.getMessage());
                s.close();
            }
        }
    }

    private static void sleep(long ms) throws IOException {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IOException("interrupted", e);
        }
    }

    public int rank() {
        return rank;
    }

    public int world() {
        return world;
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

    /** Every rank's {@code mine}, indexed by rank. */
    public byte[][] allGather(byte[] mine) {
        byte[][] all = new byte[world][];
        all[rank] = mine.clone();
        for (int s = 0; s < world - 1; s++) {
            int send = Math.floorMod(rank - s, world);
            int recv = Math.floorMod(rank - s - 1, world);
            all[recv] = exchange(all[send], all[send].length, -1, "all-gather");
        }
        return all;
    }

    private void exchangeFloats(float[] data, int from, int count, int expect, String phase) {
        int bytes = count * Float.BYTES;
        if (sendBuf.length < bytes) {
            sendBuf = new byte[bytes];
        }
        ByteBuffer.wrap(sendBuf, 0, bytes).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().put(data, from, count);
        byte[] got = exchange(sendBuf, bytes, expect * Float.BYTES, phase);
        if (recvFloats.length < expect) {
            recvFloats = new float[expect];
        }
        ByteBuffer.wrap(got, 0, expect * Float.BYTES).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(recvFloats, 0, expect);
    }

    /** Sends {@code len} bytes to the next rank while receiving from the previous one; -1 accepts any length. */
    private byte[] exchange(byte[] send, int len, int expect, String phase) {
        long id = op++;
        Future<?> sent = sender.submit(() -> {
            out.writeLong(id);
            out.writeInt(len);
            out.write(send, 0, len);
            out.flush();
            return null;
        });
        int prev = Math.floorMod(rank - 1, world);
        Peer from = peers.get(prev);
        byte[] got;
        try {
            long theirId = in.readLong();
            int n = in.readInt();
            if (theirId != id || (expect >= 0 && n != expect) || n < 0) {
                throw new IOException("ring out of step: rank " + prev + " sent operation " + theirId + " of " + n
                        + " bytes where operation " + id + (expect >= 0 ? " of " + expect + " bytes" : "") + " was due");
            }
            if (expect >= 0) {
                if (recvBuf.length < n) {
                    recvBuf = new byte[n];
                }
                got = recvBuf;
            } else {
                got = new byte[n];
            }
            in.readFully(got, 0, n);
            sent.get();
        } catch (SocketTimeoutException e) {
            close();
            throw new CollectiveTimeoutException("rank " + rank + ": rank " + prev + " (" + from.host() + ":" + from.port()
                    + ") sent nothing for " + timeout.toSeconds() + " s during " + phase + " (operation " + id
                    + "); it is stalled or dead (the timeout is spark.kindling.timeout.collective)", e);
        } catch (EOFException e) {
            close();
            throw new PeerFailureException("rank " + rank + ": rank " + prev + " closed the ring during " + phase
                    + " (operation " + id + "); it failed or was stopped", e);
        } catch (IOException e) {
            close();
            throw new UncheckedIOException("rank " + rank + ": " + phase + " failed: " + e.getMessage(), e);
        } catch (ExecutionException e) {
            close();
            throw new UncheckedIOException(new IOException("rank " + rank + ": sending to rank " + (rank + 1) % world
                    + " failed during " + phase + ": " + e.getCause().getMessage(), e.getCause()));
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            close();
            throw new UncheckedIOException(new IOException("rank " + rank + ": interrupted during " + phase, e));
        }
        return got;
    }

    @Override
    public void close() {
        if (world == 1) {
            return;
        }
        sender.shutdownNow();
        for (Socket s : new Socket[] {toNext, fromPrev}) {
            try {
                s.close();
            } catch (IOException ignored) {
                // closing to fail the other side fast; nothing more to do
            }
        }
    }
}
