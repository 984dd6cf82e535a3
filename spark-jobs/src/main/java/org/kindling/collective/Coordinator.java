package org.kindling.collective;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.EOFException;
import java.io.IOException;
import java.net.Socket;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.TreeMap;
import java.util.function.Consumer;
import java.util.function.Supplier;
import org.kindling.models.train.StepResult;

/**
 * The driver's side of a run: workers connect (authenticating with the run's secret), announce
 * their rank, stage attempt and ring address, and once all have arrived each gets the full list
 * of ring addresses and the checkpoint to resume from (chosen once per attempt, so every rank
 * restores the same one). Afterwards rank 0 streams its step results here for progress and
 * metrics. A rendezvous that is incomplete after the timeout answers the workers that came with
 * an error naming the missing ranks; a retried stage attempt starts a fresh rendezvous, and the
 * driver logs which checkpoint it resumes from and which worker the previous attempt lost.
 *
 * <p>Connections are accepted by a {@link Gate} (a deadline and a bounded number of connections
 * before authentication, no thread for a stranger); every message after it is a MACed
 * {@link Link} frame of at most {@link #MAX_MESSAGE} bytes.
 */
public final class Coordinator implements AutoCloseable {
    static final String PURPOSE = "kindling-coordinator";
    /** The largest message either side accepts: a rendezvous answer lists every worker's address. */
    static final int MAX_MESSAGE = 1 << 20;
    private static final System.Logger LOG = System.getLogger(Coordinator.class.getName());
    static final byte HELLO = 'H';
    private static final byte OK = 1;
    private static final byte ERROR = 0;
    static final byte STEP = 'S';
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
    private final Duration rendezvousTimeout;
    private final Supplier<Optional<String>> resumeChooser;
    private final Consumer<StepResult> onStep;
    private final Map<Integer, Group> groups = new HashMap<>();
    private final Map<Integer, String> abandoned = new HashMap<>();
    private final List<Link> open = new ArrayList<>();
    private final List<Failure> failures = new ArrayList<>();
    /** Open worker connections per stage attempt; guarded by {@code failures}. */
    private final Map<Integer, Integer> connected = new HashMap<>();
    /** Per stage attempt, the first worker whose connection ended without a word (its executor died); guarded by {@code failures}. */
    private final Map<Integer, Integer> silent = new HashMap<>();
    private final Gate gate;
    private volatile boolean closed;

    /**
     * Listens on {@code host} (the address Spark advertises for the driver), on a free port.
     *
     * @param resumeChooser called once per stage attempt when its rendezvous completes
     * @param onStep receives rank 0's step results, on a coordinator thread
     */
    public Coordinator(String host, int world, RunSecret secret, Duration rendezvousTimeout,
                       Supplier<Optional<String>> resumeChooser, Consumer<StepResult> onStep) throws IOException {
        if (world < 1) {
            throw new IllegalArgumentException("a run needs at least one worker, got " + world);
        }
        this.world = world;
        this.rendezvousTimeout = rendezvousTimeout;
        this.resumeChooser = resumeChooser;
        this.onStep = onStep;
        this.gate = new Gate("coordinator", host, secret, PURPOSE, (socket, session) -> {
            Thread t = new Thread(() -> serve(socket, session), "kindling-coordinator-" + socket.getRemoteSocketAddress());
            t.setDaemon(true);
            t.start();
        });
        LOG.log(System.Logger.Level.INFO, "coordinator listening on " + host + ":" + port());
    }

    public int port() {
        return gate.address().getPort();
    }

    /** Connections refused so far before authentication (see {@link Gate#refused}). */
    public int refused() {
        return gate.refused();
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

    private void serve(Socket s, Handshake.Session session) {
        int attempt = -1;
        int rank = -1;
        boolean said = false;
        Link link = null;
        try {
            link = new Link(s, session, "the worker at " + s.getRemoteSocketAddress(), rendezvousTimeout);
            synchronized (open) {
                if (closed) {
                    return;
                }
                open.add(link);
            }
            link.readTimeout(Duration.ofSeconds(10));
            DataInputStream in = receive(link, HELLO);
            attempt = in.readInt();
            synchronized (failures) {
                connected.merge(attempt, 1, Integer::sum);
            }
            rank = in.readInt();
            Ring.Peer peer = new Ring.Peer(in.readUTF(), in.readInt());
            Group g;
            try {
                g = join(attempt, rank, peer);
            } catch (RuntimeException e) {
                // A stale attempt, or a run directory whose checkpoint cannot be read: the worker fails with the reason.
                send(link, ERROR, out -> out.writeUTF(reason(e)));
                said = true;
                return;
            }
            send(link, OK, out -> {
                out.writeInt(world);
                for (Ring.Peer p : g.peers) {
                    out.writeUTF(p.host());
                    out.writeInt(p.port());
                }
                out.writeUTF(g.resume.orElse(""));
            });
            // From here on the ring's timeouts watch the workers; this read ends when the worker or the run does.
            link.readTimeout(Duration.ZERO);
            while (true) {
                in = receive(link, -1);
                long kind = link.lastOp();
                if (kind == BYE) {
                    said = true;
                    return;
                }
                if (kind == FAILED) {
                    said = true;
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
                onStep.accept(readStep(in, rank));
            }
        } catch (EOFException e) {
            // the worker went away; Spark reports why
        } catch (IOException | RuntimeException e) {
            if (!closed) {
                LOG.log(System.Logger.Level.WARNING, "coordinator connection " + s.getRemoteSocketAddress() + ": " + e.getMessage());
            }
        } finally {
            if (link != null) {
                link.close();
                synchronized (open) {
                    open.remove(link);
                }
            }
            synchronized (failures) {
                if (attempt >= 0) {
                    connected.merge(attempt, -1, Integer::sum);
                    if (rank >= 0 && !said && !closed) {
                        silent.putIfAbsent(attempt, rank);
                    }
                }
                failures.notifyAll();
            }
        }
    }

    /**
     * A STEP message: the fixed fields, then the count of named metrics and (name, value) pairs. The
     * count is capped before anything is allocated and names are checked as {@link StepResult} checks them.
     */
    static StepResult readStep(DataInputStream in, int rank) throws IOException {
        int step = in.readInt();
        double loss = in.readDouble();
        double lr = in.readDouble();
        double gradNorm = in.readDouble();
        long tokens = in.readLong();
        double seconds = in.readDouble();
        int count = in.readInt();
        if (count < 0 || count > StepResult.MAX_METRICS) {
            throw new IOException("rank " + rank + " reported step " + step + " with " + count + " metrics; at most "
                    + StepResult.MAX_METRICS);
        }
        TreeMap<String, Double> metrics = new TreeMap<>();
        for (int i = 0; i < count; i++) {
            String name = in.readUTF();
            if (metrics.put(name, in.readDouble()) != null) {
                throw new IOException("rank " + rank + " reported metric " + name + " twice in step " + step);
            }
        }
        try {
            return new StepResult(step, loss, lr, gradNorm, tokens, seconds, metrics);
        } catch (IllegalArgumentException e) {
            throw new IOException("rank " + rank + " reported a bad step " + step + ": " + e.getMessage(), e);
        }
    }

    /** An error's message with its cause's, for a worker that cannot see the driver's log. */
    private static String reason(RuntimeException e) {
        return e.getCause() != null && e.getCause().getMessage() != null ? e.getMessage() + ": " + e.getCause().getMessage()
                : String.valueOf(e.getMessage());
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
            try {
                g.resume = resumeChooser.get();
            } catch (RuntimeException e) {
                // The waiting members fail with the same reason instead of waiting out the rendezvous.
                g.aborted = reason(e);
                notifyAll();
                throw e;
            }
            g.peers = g.members.values().stream().map(Member::peer).toList();
            groups.keySet().stream().filter(a -> a < attempt).max(Integer::compare)
                    .ifPresent(previous -> LOG.log(System.Logger.Level.INFO, resumed(attempt, previous, g.resume)));
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
     * The line saying that stage attempt {@code attempt} resumes after {@code previous} failed: from
     * which checkpoint, and which worker was lost, as the workers told it (the first that failed
     * on its own, else the first that vanished without a word, else the first echo), else as Spark did.
     */
    private String resumed(int attempt, int previous, Optional<String> resume) {
        String lost;
        synchronized (failures) {
            List<Failure> before = failures.stream().filter(f -> f.attempt() == previous).toList();
            Optional<Failure> cause = before.stream().filter(f -> !f.echo()).findFirst();
            Integer vanished = silent.get(previous);
            if (cause.isPresent()) {
                lost = worker(previous, cause.get().rank()) + ": " + cause.get().message();
            } else if (vanished != null) {
                lost = worker(previous, vanished) + ": its connection to the driver ended without a word (executor lost)";
            } else if (!before.isEmpty()) {
                lost = worker(previous, before.get(0).rank()) + ": " + before.get(0).message();
            } else {
                lost = "a worker: " + abandoned.getOrDefault(previous, "Spark gave no reason");
            }
        }
        return "stage attempt " + attempt + " resumes from " + resume.map(c -> "checkpoint " + c).orElse("the start (no checkpoint yet)")
                + " after stage attempt " + previous + " lost " + lost;
    }

    private String worker(int attempt, int rank) {
        Group g = groups.get(attempt);
        Member m = g == null ? null : g.members.get(rank);
        return "rank " + rank + (m == null ? "" : " (" + m.peer().host() + ")");
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
        gate.close();
        synchronized (open) {
            open.forEach(Link::close);
        }
    }

    private interface Body {
        void write(DataOutputStream out) throws IOException;
    }

    private static void send(Link link, byte kind, Body body) throws IOException {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        DataOutputStream out = new DataOutputStream(bytes);
        body.write(out);
        out.flush();
        link.send(kind, bytes.toByteArray(), 0, bytes.size());
    }

    /** The next message, of {@code kind} (any if negative), as a stream over its bytes. */
    private static DataInputStream receive(Link link, long kind) throws IOException {
        int n = link.receive(kind, -1, MAX_MESSAGE);
        return new DataInputStream(new ByteArrayInputStream(link.buffer(), 0, n));
    }

    /** A worker's connection to the coordinator. */
    public static final class Client implements AutoCloseable {
        private final Link link;
        private final Duration timeout;

        private Client(Link link, Duration timeout) {
            this.link = link;
            this.timeout = timeout;
        }

        /**
         * Connects and authenticates; {@code timeout} is the rendezvous timeout, which bounds every
         * wait for the driver, reads and writes alike.
         */
        public static Client connect(String host, int port, RunSecret secret, Duration timeout) throws IOException {
            try {
                Link link = Link.dial(host, port, secret, PURPOSE, "the driver's coordinator at " + host + ":" + port, timeout,
                        System.nanoTime() + timeout.toNanos());
                link.readTimeout(timeout);
                return new Client(link, timeout);
            } catch (IOException e) {
                throw new IOException("cannot reach the driver's coordinator at " + host + ":" + port + ": " + e.getMessage(), e);
            }
        }

        /** Announces this worker and waits for every other one (the driver enforces the rendezvous timeout). */
        public Rendezvous hello(int attempt, int rank, Ring.Peer me) throws IOException {
            send(link, HELLO, out -> {
                out.writeInt(attempt);
                out.writeInt(rank);
                out.writeUTF(me.host());
                out.writeInt(me.port());
            });
            // The driver answers within its rendezvous timeout; the margin covers a slow driver, not a dead one.
            link.readTimeout(timeout.plusSeconds(30));
            DataInputStream in = receive(link, -1);
            if (link.lastOp() != OK) {
                throw new IOException("rendezvous failed: " + (link.lastOp() == ERROR ? in.readUTF() : "unexpected answer " + link.lastOp()));
            }
            int world = in.readInt();
            List<Ring.Peer> peers = new ArrayList<>();
            for (int r = 0; r < world; r++) {
                peers.add(new Ring.Peer(in.readUTF(), in.readInt()));
            }
            String resume = in.readUTF();
            return new Rendezvous(peers, resume.isEmpty() ? Optional.empty() : Optional.of(resume));
        }

        /** Sends a step's result for the driver's progress display and metrics. */
        public void report(StepResult r) throws IOException {
            send(link, STEP, out -> {
                out.writeInt(r.step());
                out.writeDouble(r.loss());
                out.writeDouble(r.lr());
                out.writeDouble(r.gradNorm());
                out.writeLong(r.tokens());
                out.writeDouble(r.seconds());
                out.writeInt(r.metrics().size());
                for (Map.Entry<String, Double> m : r.metrics().entrySet()) {
                    out.writeUTF(m.getKey());
                    out.writeDouble(m.getValue());
                }
            });
        }

        /**
         * Tells the driver why this worker is failing (best effort: the driver may be gone).
         *
         * @param echo whether it fails because another worker did
         */
        public void failed(String message, boolean echo) {
            try {
                send(link, FAILED, out -> {
                    // writeUTF takes at most 65535 bytes of modified UTF-8
                    out.writeUTF(message.length() > 8000 ? message.substring(0, 8000) + "…" : message);
                    out.writeBoolean(echo);
                });
            } catch (IOException ignored) {
                // Spark reports the task failure either way
            }
        }

        @Override
        public void close() {
            try {
                send(link, BYE, out -> { });
            } catch (IOException ignored) {
                // the driver may be gone already
            } finally {
                link.close();
            }
        }
    }
}
