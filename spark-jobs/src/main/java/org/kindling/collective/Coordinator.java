package org.kindling.collective;

import java.io.BufferedOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.TreeMap;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.Consumer;
import java.util.function.Supplier;
import org.kindling.models.StepResult;

/**
 * The driver's side of a run: workers connect (authenticating with the run's secret), announce
 * their rank, stage attempt and ring address, and once all have arrived each gets the full list
 * of ring addresses and the checkpoint to resume from (chosen once per attempt, so every rank
 * restores the same one). Afterwards rank 0 streams its step results here for progress and
 * metrics. A rendezvous that is incomplete after the timeout answers the workers that came with
 * an error naming the missing ranks; a retried stage attempt starts a fresh rendezvous.
 */
public final class Coordinator implements AutoCloseable {
    static final String PURPOSE = "kindling-coordinator";
    private static final System.Logger LOG = System.getLogger(Coordinator.class.getName());
    private static final byte OK = 1;
    private static final byte ERROR = 0;
    private static final byte STEP = 'S';
    private static final byte BYE = 'B';
    private static final byte FAILED = 'F';

    /**
     * A worker's report that it is failing, and why.
     *
     * @param echo whether it failed because another worker did (a peer closed the ring or went silent)
     */
    public record Failure(int attempt, int rank, String message, boolean echo) {
    }

    /** What a worker learns at the rendezvous. */
    public record Rendezvous(List<Ring.Peer> peers, Optional<String> resume) {
    }

    private record Member(int rank, Ring.Peer peer) {
    }

    /** The workers of one stage attempt. */
    private final class Group {
        final Map<Integer, Member> members = new TreeMap<>();
        final long deadline = System.nanoTime() + rendezvousTimeout.toNanos();
        List<Ring.Peer> peers;
        Optional<String> resume;
        String aborted;
    }

    private final int world;
    private final String secret;
    private final Duration rendezvousTimeout;
    private final Supplier<Optional<String>> resumeChooser;
    private final Consumer<StepResult> onStep;
    private final ServerSocket server;
    private final Map<Integer, Group> groups = new HashMap<>();
    private final Map<Integer, String> abandoned = new HashMap<>();
    private final List<Socket> open = new ArrayList<>();
    private final AtomicInteger refused = new AtomicInteger();
    private final List<Failure> failures = new ArrayList<>();
    /** Open worker connections per stage attempt; guarded by {@code failures}. */
    private final Map<Integer, Integer> connected = new HashMap<>();
    private final Thread acceptor;
    private volatile boolean closed;

    /**
     * Listens on every interface, on a free port.
     *
     * @param resumeChooser called once per stage attempt when its rendezvous completes
     * @param onStep receives rank 0's step results, on a coordinator thread
     */
    public Coordinator(int world, String secret, Duration rendezvousTimeout, Supplier<Optional<String>> resumeChooser,
                       Consumer<StepResult> onStep) throws IOException {
        if (world < 1) {
            throw new IllegalArgumentException("a run needs at least one worker, got " + world);
        }
        this.world = world;
        this.secret = secret;
        this.rendezvousTimeout = rendezvousTimeout;
        this.resumeChooser = resumeChooser;
        this.onStep = onStep;
        this.server = new ServerSocket();
        server.bind(new InetSocketAddress(0), 64);
        this.acceptor = new Thread(this::acceptLoop, "kindling-coordinator");
        acceptor.setDaemon(true);
        acceptor.start();
    }

    public int port() {
        return server.getLocalPort();
    }

    /** Connections refused so far because they failed authentication. */
    public int refused() {
        return refused.get();
    }

    /**
     * The cause of the newest stage attempt's failure as the workers reported it: the first failure
     * that was not an echo of another worker's, else the first echo (a stalled worker reports nothing itself).
     */
    public Optional<Failure> firstFailure(Duration wait) {
        long deadline = System.nanoTime() + wait.toNanos();
        synchronized (failures) {
            while (true) {
                int newest = Math.max(failures.stream().mapToInt(Failure::attempt).max().orElse(-1),
                        connected.keySet().stream().mapToInt(Integer::intValue).max().orElse(-1));
                List<Failure> last = failures.stream().filter(f -> f.attempt() == newest).toList();
                Optional<Failure> cause = last.stream().filter(f -> !f.echo()).findFirst();
                long left = (deadline - System.nanoTime()) / 1_000_000;
                // The worker that failed first may still be sending (its connection's messages are read in order).
                if (cause.isPresent() || left <= 0 || connected.getOrDefault(newest, 0) == 0) {
                    return cause.or(() -> last.stream().findFirst());
                }
                try {
                    failures.wait(left);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    return cause.or(() -> last.stream().findFirst());
                }
            }
        }
    }

    private void acceptLoop() {
        while (!closed) {
            try {
                Socket s = server.accept();
                synchronized (open) {
                    open.add(s);
                }
                Thread t = new Thread(() -> serve(s), "kindling-coordinator-" + s.getRemoteSocketAddress());
                t.setDaemon(true);
                t.start();
            } catch (IOException e) {
                if (!closed) {
                    LOG.log(System.Logger.Level.WARNING, "coordinator stopped accepting: " + e.getMessage());
                }
                return;
            }
        }
    }

    private void serve(Socket s) {
        int attempt = -1;
        try (s) {
            s.setSoTimeout(10_000);
            try {
                Handshake.accept(s, secret, PURPOSE);
            } catch (IOException e) {
                refused.incrementAndGet();
                LOG.log(System.Logger.Level.WARNING, "coordinator refused a connection from " + s.getRemoteSocketAddress() + ": "
                        + e.getMessage());
                return;
            }
            DataInputStream in = new DataInputStream(s.getInputStream());
            DataOutputStream out = new DataOutputStream(new BufferedOutputStream(s.getOutputStream()));
            attempt = in.readInt();
            synchronized (failures) {
                connected.merge(attempt, 1, Integer::sum);
            }
            int rank = in.readInt();
            Ring.Peer peer = new Ring.Peer(in.readUTF(), in.readInt());
            Group g;
            try {
                g = join(attempt, rank, peer);
            } catch (IllegalStateException e) {
                out.writeByte(ERROR);
                out.writeUTF(e.getMessage());
                out.flush();
                return;
            }
            out.writeByte(OK);
            out.writeInt(world);
            for (Ring.Peer p : g.peers) {
                out.writeUTF(p.host());
                out.writeInt(p.port());
            }
            out.writeUTF(g.resume.orElse(""));
            out.flush();
            s.setSoTimeout(0); // from here on the ring's timeouts watch the workers
            while (true) {
                byte kind = in.readByte();
                if (kind == BYE) {
                    return;
                }
                if (kind == FAILED) {
                    Failure f = new Failure(attempt, rank, in.readUTF(), in.readBoolean());
                    synchronized (failures) {
                        failures.add(f);
                        failures.notifyAll();
                    }
                    continue;
                }
                if (kind != STEP) {
                    throw new IOException("unknown message " + kind + " from rank " + rank);
                }
                StepResult r = new StepResult(in.readInt(), in.readDouble(), in.readDouble(), in.readDouble(), in.readLong(),
                        in.readDouble());
                onStep.accept(r);
            }
        } catch (EOFException e) {
            // the worker went away; Spark reports why
        } catch (IOException | RuntimeException e) {
            if (!closed) {
                LOG.log(System.Logger.Level.WARNING, "coordinator connection " + s.getRemoteSocketAddress() + ": " + e.getMessage());
            }
        } finally {
            synchronized (open) {
                open.remove(s);
            }
            synchronized (failures) {
                if (attempt >= 0) {
                    connected.merge(attempt, -1, Integer::sum);
                }
                failures.notifyAll();
            }
        }
    }

    /** Adds a worker to its attempt's rendezvous and waits until the rendezvous completes or times out. */
    private synchronized Group join(int attempt, int rank, Ring.Peer peer) {
        if (rank < 0 || rank >= world) {
            throw new IllegalStateException("rank " + rank + " is not in [0, " + world + ")");
        }
        int newest = groups.keySet().stream().mapToInt(Integer::intValue).max().orElse(attempt);
        if (attempt < newest) {
            throw new IllegalStateException("stage attempt " + attempt + " is stale: attempt " + newest + " has started");
        }
        Group g = groups.computeIfAbsent(attempt, a -> new Group());
        if (abandoned.containsKey(attempt)) {
            g.aborted = abandoned.get(attempt);
        }
        if (g.members.containsKey(rank) || g.peers != null) {
            throw new IllegalStateException("rank " + rank + " joined stage attempt " + attempt + " twice");
        }
        g.members.put(rank, new Member(rank, peer));
        if (g.members.size() == world) {
            g.peers = g.members.values().stream().map(Member::peer).toList();
            g.resume = resumeChooser.get();
            notifyAll();
        }
        while (g.peers == null) {
            if (g.aborted != null) {
                throw new IllegalStateException("rendezvous of stage attempt " + attempt + " was abandoned: " + g.aborted);
            }
            long left = (g.deadline - System.nanoTime()) / 1_000_000;
            if (left <= 0 || closed) {
                List<Integer> missing = new ArrayList<>();
                for (int r = 0; r < world; r++) {
                    if (!g.members.containsKey(r)) {
                        missing.add(r);
                    }
                }
                throw new IllegalStateException("rendezvous of stage attempt " + attempt + " timed out after "
                        + rendezvousTimeout.toSeconds() + " s: ranks " + missing + " of " + world
                        + " never arrived (the timeout is spark.kindling.timeout.rendezvous)");
            }
            try {
                wait(left);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new IllegalStateException("coordinator interrupted");
            }
        }
        return g;
    }

    /**
     * Fails the rendezvous of a stage attempt that Spark has given up on, now or when its workers
     * arrive, so that they stop at once instead of at the timeout (a blocked socket read ignores
     * Spark's interrupt when it cancels a failed stage).
     */
    public synchronized void abandon(int attempt, String reason) {
        abandoned.putIfAbsent(attempt, reason);
        Group g = groups.get(attempt);
        if (g != null && g.peers == null && g.aborted == null) {
            g.aborted = reason;
        }
        notifyAll();
    }

    @Override
    public void close() {
        closed = true;
        synchronized (this) {
            notifyAll();
        }
        try {
            server.close();
        } catch (IOException ignored) {
            // the accept loop ends either way
        }
        synchronized (open) {
            for (Socket s : open) {
                try {
                    s.close();
                } catch (IOException ignored) {
                    // shutting down
                }
            }
        }
    }

    /** A worker's connection to the coordinator. */
    public static final class Client implements AutoCloseable {
        private final Socket socket;
        private final DataInputStream in;
        private final DataOutputStream out;
        private final Duration timeout;

        private Client(Socket socket, Duration timeout) throws IOException {
            this.socket = socket;
            this.timeout = timeout;
            this.in = new DataInputStream(socket.getInputStream());
            this.out = new DataOutputStream(new BufferedOutputStream(socket.getOutputStream()));
        }

        /** Connects and authenticates; {@code timeout} is the rendezvous timeout, which bounds every wait for the driver. */
        public static Client connect(String host, int port, String secret, Duration timeout) throws IOException {
            Socket s = new Socket();
            try {
                s.connect(new InetSocketAddress(host, port), (int) Math.min(Integer.MAX_VALUE, timeout.toMillis()));
                s.setTcpNoDelay(true);
                s.setSoTimeout((int) Math.min(Integer.MAX_VALUE, timeout.toMillis()));
                Handshake.connect(s, secret, PURPOSE);
                return new Client(s, timeout);
            } catch (IOException e) {
                s.close();
                throw new IOException("cannot reach the driver's coordinator at " + host + ":" + port + ": " + e.getMessage(), e);
            }
        }

        /** Announces this worker and waits for every other one (the driver enforces the rendezvous timeout). */
        public Rendezvous hello(int attempt, int rank, Ring.Peer me) throws IOException {
            out.writeInt(attempt);
            out.writeInt(rank);
            out.writeUTF(me.host());
            out.writeInt(me.port());
            out.flush();
            // The driver answers within its rendezvous timeout; the margin covers a slow driver, not a dead one.
            socket.setSoTimeout((int) Math.min(Integer.MAX_VALUE, timeout.plusSeconds(30).toMillis()));
            byte status = in.readByte();
            if (status != OK) {
                throw new IOException("rendezvous failed: " + in.readUTF());
            }
            int world = in.readInt();
            List<Ring.Peer> peers = new ArrayList<>();
            for (int r = 0; r < world; r++) {
                peers.add(new Ring.Peer(in.readUTF(), in.readInt()));
            }
            String resume = in.readUTF();
            socket.setSoTimeout(0);
            return new Rendezvous(peers, resume.isEmpty() ? Optional.empty() : Optional.of(resume));
        }

        /** Sends a step's result for the driver's progress display and metrics. */
        public void report(StepResult r) throws IOException {
            out.writeByte(STEP);
            out.writeInt(r.step());
            out.writeDouble(r.loss());
            out.writeDouble(r.lr());
            out.writeDouble(r.gradNorm());
            out.writeLong(r.tokens());
            out.writeDouble(r.seconds());
            out.flush();
        }

        /**
         * Tells the driver why this worker is failing (best effort: the driver may be gone).
         *
         * @param echo whether it fails because another worker did
         */
        public void failed(String message, boolean echo) {
            try {
                out.writeByte(FAILED);
                // writeUTF takes at most 65535 bytes of modified UTF-8
                out.writeUTF(message.length() > 8000 ? message.substring(0, 8000) + "…" : message);
                out.writeBoolean(echo);
                out.flush();
            } catch (IOException ignored) {
                // Spark reports the task failure either way
            }
        }

        @Override
        public void close() throws IOException {
            try {
                out.writeByte(BYE);
                out.flush();
            } catch (IOException ignored) {
                // the driver may be gone already
            } finally {
                socket.close();
            }
        }
    }
}
