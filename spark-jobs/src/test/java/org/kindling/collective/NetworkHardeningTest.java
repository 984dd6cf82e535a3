package org.kindling.collective;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.DataOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.ConnectException;
import java.net.Inet4Address;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.NetworkInterface;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Base64;
import java.util.HexFormat;
import java.util.List;
import java.util.Optional;
import java.util.SplittableRandom;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;

/**
 * The network rules: listen only on the given host, strangers cannot hold the accept loop, every
 * frame is authenticated, lengths are capped before allocating, writes have deadlines, and the
 * run's secret is never printed.
 */
class NetworkHardeningTest {
    static final String HOST = "127.0.0.1";

    @Test
    void listenersBindOnlyTheGivenHostLogTheirAddressAndRefuseTheWildcard() throws Exception {
        RunSecret secret = RunSecret.generate();
        try (LogCapture logs = new LogCapture(); Ring.Listener l = Ring.listen(3, HOST, secret);
             Coordinator c = new Coordinator(HOST, 1, secret, Duration.ofSeconds(5), Optional::empty, r -> { })) {
            assertEquals(new Ring.Peer(HOST, l.address().port()), l.address());
            assertTrue(logs.lines().contains("INFO rank 3 ring listening on 127.0.0.1:" + l.address().port()), logs.lines().toString());
            assertTrue(logs.lines().contains("INFO coordinator listening on 127.0.0.1:" + c.port()), logs.lines().toString());
            // Another address of this machine must not reach them (when it has one).
            Optional<InetAddress> other = NetworkInterface.networkInterfaces().flatMap(NetworkInterface::inetAddresses)
                    .filter(a -> a instanceof Inet4Address && !a.isLoopbackAddress()).findFirst();
            for (int port : new int[] {l.address().port(), c.port()}) {
                if (other.isPresent()) {
                    try (Socket s = new Socket()) {
                        assertThrows(ConnectException.class, () -> s.connect(new InetSocketAddress(other.get(), port), 2_000));
                    }
                }
            }
        }
        IOException e = assertThrows(IOException.class, () -> Ring.listen(0, "0.0.0.0", secret));
        assertTrue(e.getMessage().contains("refusing to listen on the wildcard address"), e.getMessage());
    }

    @Test
    void threeHundredIdleAndThreeHundredGarbageStrangersNeitherBlockTheRingNorLinger() throws Exception {
        RunSecret secret = RunSecret.generate();
        Ring.Listener l0 = Ring.listen(0, HOST, secret);
        Ring.Listener l1 = Ring.listen(1, HOST, secret);
        List<Ring.Peer> peers = List.of(l0.address(), l1.address());
        ExecutorService pool = Executors.newFixedThreadPool(2);
        try (Strangers strangers = new Strangers(HOST, l1.address().port(), 600)) {
            assertEquals(600, strangers.connected(), "every stranger was accepted");
            // Rank 0 reaches rank 1 while its strangers are still pending: it must not wait behind them.
            long t0 = System.nanoTime();
            List<Future<float[]>> ranks = new ArrayList<>();
            for (int r = 0; r < 2; r++) {
                int rank = r;
                Ring.Listener l = rank == 0 ? l0 : l1;
                ranks.add(pool.submit(() -> {
                    try (Ring ring = Ring.connect(rank, peers, l, Duration.ofSeconds(20))) {
                        float[] x = RingTest.data(rank, 1000);
                        ring.allReduce(x, 0, x.length);
                        return x;
                    }
                }));
            }
            float[] a = ranks.get(0).get(20, TimeUnit.SECONDS);
            assertArrayEquals(a, ranks.get(1).get(20, TimeUnit.SECONDS));
            double seconds = (System.nanoTime() - t0) / 1e9;
            assertTrue(seconds < Gate.DEADLINE_NANOS / 1e9, "the ring formed in " + seconds + " s, after the strangers' deadline");
            // Refused, timed out, or dropped when the formed ring closed its listener: none lingers.
            assertEquals(600, strangers.hungUp(Duration.ofSeconds(10)), "the gate hangs up on every stranger");
            assertTrue(l1.refused() > 0);
        } finally {
            pool.shutdownNow();
        }
    }

    /** An authenticated pair over loopback: the accepting side's link, and the connecting side's raw socket and session. */
    record Pair(Link accepted, Socket socket, Handshake.Session session, Gate gate) implements AutoCloseable {
        static Pair open(RunSecret secret, String purpose) throws Exception {
            BlockingQueue<Link> links = new ArrayBlockingQueue<>(1);
            Gate gate = new Gate("test", HOST, secret, purpose, (s, session) -> {
                try {
                    links.add(new Link(s, session, "the test peer", Duration.ofSeconds(5)));
                } catch (IOException e) {
                    throw new IllegalStateException(e);
                }
            });
            Socket s = SocketChannel.open(new InetSocketAddress(HOST, gate.address().getPort())).socket();
            s.setSoTimeout(5_000);
            Handshake.Session session = Handshake.connect(s, secret, purpose);
            Link accepted = links.poll(5, TimeUnit.SECONDS);
            accepted.readTimeout(Duration.ofSeconds(5));
            return new Pair(accepted, s, session, gate);
        }

        @Override
        public void close() throws IOException {
            accepted.close();
            socket.close();
            gate.close();
        }
    }

    @Test
    void anOversizedLengthIsRefusedWithoutAllocatingIt() throws Exception {
        try (Pair p = Pair.open(RunSecret.generate(), Coordinator.PURPOSE)) {
            DataOutputStream raw = new DataOutputStream(p.socket().getOutputStream());
            raw.writeLong(1);
            raw.writeInt(Integer.MAX_VALUE);
            raw.flush();
            Link.Unexpected e = assertThrows(Link.Unexpected.class, () -> p.accepted().receive(-1, -1, Coordinator.MAX_MESSAGE));
            assertEquals("the test peer announced a frame of 2147483647 bytes; at most 1048576 are allowed here", e.getMessage());
            assertEquals(0, p.accepted().bufferCapacity(), "nothing was allocated for it");
        }
        try (Pair p = Pair.open(RunSecret.generate(), Ring.PURPOSE)) {
            DataOutputStream raw = new DataOutputStream(p.socket().getOutputStream());
            raw.writeLong(0);
            raw.writeInt(-5);
            raw.flush();
            assertThrows(Link.Unexpected.class, () -> p.accepted().receive(-1, -1, Ring.MAX_GATHER_BYTES));
            assertEquals(0, p.accepted().bufferCapacity());
        }
    }

    @Test
    void framesArriveIntactInOrder() throws Exception {
        try (Pair p = Pair.open(RunSecret.generate(), Ring.PURPOSE)) {
            Link sender = new Link(p.socket(), p.session(), "the acceptor", Duration.ofSeconds(5));
            for (int op = 0; op < 3; op++) {
                byte[] payload = new byte[700_000 + op]; // several MAC chunks
                new SplittableRandom(op).nextBytes(payload);
                sender.send(op, payload, 0, payload.length);
                assertEquals(payload.length, p.accepted().receive(op, payload.length, payload.length));
                assertArrayEquals(payload, Arrays.copyOf(p.accepted().buffer(), payload.length));
            }
        }
    }

    /** Forwards one connection to {@code target}, flipping one bit at byte {@code flipAt} of what the client sends. */
    static final class TamperingProxy implements AutoCloseable {
        final ServerSocket server = new ServerSocket();
        final List<Socket> open = new java.util.concurrent.CopyOnWriteArrayList<>();

        TamperingProxy(int target, long flipAt) throws IOException {
            server.bind(new InetSocketAddress(HOST, 0));
            Thread t = new Thread(() -> {
                try {
                    Socket in = server.accept();
                    Socket out = new Socket(HOST, target);
                    open.add(in);
                    open.add(out);
                    Thread back = new Thread(() -> pump(out, in, -1));
                    back.setDaemon(true);
                    back.start();
                    pump(in, out, flipAt);
                } catch (IOException e) {
                    // the test is over
                }
            });
            t.setDaemon(true);
            t.start();
        }

        int port() {
            return server.getLocalPort();
        }

        private static void pump(Socket from, Socket to, long flipAt) {
            byte[] b = new byte[8192];
            long pos = 0;
            try {
                InputStream in = from.getInputStream();
                OutputStream out = to.getOutputStream();
                for (int n; (n = in.read(b)) > 0; pos += n) {
                    if (flipAt >= pos && flipAt < pos + n) {
                        b[(int) (flipAt - pos)] ^= 0x10;
                    }
                    out.write(b, 0, n);
                }
                to.shutdownOutput();
            } catch (IOException e) {
                // one side closed
            }
        }

        @Override
        public void close() throws IOException {
            server.close();
            for (Socket s : open) {
                s.close();
            }
        }
    }

    @Test
    void aBitFlippedOnTheWayFailsTheRunNamingThePeerItCameFrom() throws Exception {
        // What rank 0 sends rank 1: the handshake answer, the rank announcement, then reduce-scatter's frame (header, 20,000 bytes, tag).
        long frame = Handshake.HELLO_BYTES + (12 + 4 + Handshake.TAG);
        for (long flipAt : new long[] {frame + 12 + 1000, frame + 12 + 20_000 + 5}) {
            RunSecret secret = RunSecret.generate();
            Ring.Listener l0 = Ring.listen(0, HOST, secret);
            Ring.Listener l1 = Ring.listen(1, HOST, secret);
            ExecutorService pool = Executors.newFixedThreadPool(2);
            try (TamperingProxy proxy = new TamperingProxy(l1.address().port(), flipAt)) {
                List<Ring.Peer> real = List.of(l0.address(), l1.address());
                List<Ring.Peer> viaProxy = List.of(l0.address(), new Ring.Peer(HOST, proxy.port()));
                List<Future<String>> errors = new ArrayList<>();
                for (int r = 0; r < 2; r++) {
                    int rank = r;
                    errors.add(pool.submit(() -> {
                        try (Ring ring = Ring.connect(rank, rank == 0 ? viaProxy : real, rank == 0 ? l0 : l1, Duration.ofSeconds(20))) {
                            float[] x = RingTest.data(rank, 10_000);
                            RuntimeException e = assertThrows(RuntimeException.class, () -> ring.allReduce(x, 0, x.length));
                            return e.getMessage();
                        }
                    }));
                }
                String msg = errors.get(1).get(30, TimeUnit.SECONDS);
                assertTrue(msg.startsWith("rank 1: reduce-scatter failed: frame 1 (operation 0, 20000 bytes) from rank 0 (127.0.0.1:"
                        + l0.address().port() + ") failed authentication"), msg);
                assertTrue(errors.get(0).get(30, TimeUnit.SECONDS).contains("rank 1 closed the ring"));
            } finally {
                pool.shutdownNow();
            }
        }
    }

    @Test
    void aPeerThatStopsReadingFailsTheWriterWithinTheTimeoutNamingIt() throws Exception {
        RunSecret secret = RunSecret.generate();
        Ring.Listener l0 = Ring.listen(0, HOST, secret);
        BlockingQueue<Socket> accepted = new ArrayBlockingQueue<>(1);
        // A rank 1 that announces itself and sends its share, but never reads what rank 0 sends.
        try (Gate fake = new Gate("fake rank 1", HOST, secret, Ring.PURPOSE, (s, session) -> accepted.add(s))) {
            List<Ring.Peer> peers = List.of(l0.address(), new Ring.Peer(HOST, fake.address().getPort()));
            int n = 16 << 20; // 32 MiB each way: far more than the sockets buffer
            ExecutorService pool = Executors.newFixedThreadPool(1);
            try {
                Future<String> rank0 = pool.submit(() -> {
                    try (Ring ring = Ring.connect(0, peers, l0, Duration.ofSeconds(2))) {
                        float[] x = new float[n];
                        CollectiveTimeoutException e = assertThrows(CollectiveTimeoutException.class, () -> ring.allReduce(x, 0, n));
                        return e.getMessage();
                    }
                });
                Link toRank0 = Link.dial(HOST, l0.address().port(), secret, Ring.PURPOSE, "rank 0", Duration.ofSeconds(30),
                        System.nanoTime() + 10_000_000_000L);
                toRank0.send(Ring.HELLO, ByteBuffer.allocate(4).putInt(1).array(), 0, 4);
                assertTrue(accepted.poll(10, TimeUnit.SECONDS) != null, "rank 0 dialled rank 1");
                long t0 = System.nanoTime();
                toRank0.send(0, new byte[n / 2 * Float.BYTES], 0, n / 2 * Float.BYTES);
                String msg = rank0.get(20, TimeUnit.SECONDS);
                double seconds = (System.nanoTime() - t0) / 1e9;
                assertTrue(msg.startsWith("rank 0: rank 1 (127.0.0.1:" + fake.address().getPort() + ") stopped reading: a frame of "
                        + (n / 2 * Float.BYTES) + " bytes was not taken within 2 s during reduce-scatter (operation 0)"), msg);
                assertTrue(seconds < 6, "failed after " + seconds + " s with a 2 s timeout");
                toRank0.close();
            } finally {
                pool.shutdownNow();
            }
        }
    }

    @Test
    void theSecretNeverAppearsInToStringLogsOrErrors() throws Exception {
        byte[] key = new byte[32];
        new SplittableRandom(42).nextBytes(key);
        RunSecret secret = new RunSecret(key);
        List<String> forms = List.of(HexFormat.of().formatHex(key), HexFormat.of().withUpperCase().formatHex(key),
                Base64.getEncoder().encodeToString(key), Arrays.toString(key),
                new String(key, java.nio.charset.StandardCharsets.ISO_8859_1));
        List<String> seen = new ArrayList<>();
        try (LogCapture logs = new LogCapture()) {
            seen.add(secret.toString());
            seen.add(List.of(secret).toString());
            try (Coordinator c = new Coordinator(HOST, 2, secret, Duration.ofSeconds(1), Optional::empty, r -> { })) {
                // A stranger with another secret, and a worker whose rendezvous fails.
                seen.add(chain(assertThrows(IOException.class, () -> Coordinator.Client.connect(HOST, c.port(), RunSecret.generate(),
                        Duration.ofSeconds(5)))));
                try (Coordinator.Client cl = Coordinator.Client.connect(HOST, c.port(), secret, Duration.ofSeconds(5))) {
                    seen.add(chain(assertThrows(IOException.class, () -> cl.hello(0, 0, new Ring.Peer(HOST, 1)))));
                }
                logs.await("coordinator refused a connection from", Duration.ofSeconds(5));
            }
            // A ring with it forms and sums; a stranger and a tampered frame fail it.
            Ring.Listener l0 = Ring.listen(0, HOST, secret);
            Ring.Listener l1 = Ring.listen(1, HOST, secret);
            List<Ring.Peer> peers = List.of(l0.address(), l1.address());
            ExecutorService pool = Executors.newFixedThreadPool(2);
            try {
                Future<?> other = pool.submit(() -> {
                    try (Ring ring = Ring.connect(1, peers, l1, Duration.ofSeconds(20))) {
                        ring.allReduce(new float[4], 0, 4);
                    }
                    return null;
                });
                try (Ring ring = Ring.connect(0, peers, l0, Duration.ofSeconds(20))) {
                    ring.allReduce(new float[4], 0, 4);
                }
                other.get(20, TimeUnit.SECONDS);
            } finally {
                pool.shutdownNow();
            }
            try (Pair p = Pair.open(secret, Ring.PURPOSE)) {
                DataOutputStream raw = new DataOutputStream(p.socket().getOutputStream());
                raw.writeLong(0);
                raw.writeInt(4);
                raw.write(new byte[4 + Handshake.TAG]);
                raw.flush();
                seen.add(chain(assertThrows(Link.Tampered.class, () -> p.accepted().receive(0, 4, 4))));
            }
            seen.addAll(logs.lines());
        }
        assertTrue(seen.size() >= 7, seen.toString());
        for (String text : seen) {
            for (String form : forms) {
                assertFalse(text.contains(form), "the secret appears in: " + text);
            }
        }
        assertEquals("RunSecret(redacted)", secret.toString());
    }

    /** An exception as a log would print it: every message of its causes. */
    static String chain(Throwable t) {
        StringBuilder sb = new StringBuilder();
        for (Throwable c = t; c != null; c = c.getCause()) {
            sb.append(c).append(" | ");
        }
        return sb.toString();
    }
}
