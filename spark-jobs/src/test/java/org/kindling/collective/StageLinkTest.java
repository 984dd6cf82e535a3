package org.kindling.collective;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.DataOutputStream;
import java.io.IOException;
import java.net.ConnectException;
import java.net.Inet4Address;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.NetworkInterface;
import java.net.Socket;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import java.time.Duration;
import java.util.List;
import java.util.Optional;
import java.util.SplittableRandom;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;

/** The link between adjacent pipeline stages, over loopback. */
class StageLinkTest {
    static final String HOST = "127.0.0.1";
    static final Duration TIMEOUT = Duration.ofSeconds(10);
    static final int CAP = 200_000;

    /** A connected pair: stage {@code up} and stage {@code up + 1}. */
    record Pair(StageLink upstream, StageLink downstream) implements AutoCloseable {
        static Pair open(int up, RunSecret secret) throws Exception {
            ExecutorService pool = Executors.newSingleThreadExecutor();
            try {
                StageLink.Listener l = StageLink.listen(up + 1, 0, HOST, secret);
                Future<StageLink> accepted = pool.submit(() -> l.accept(CAP, TIMEOUT));
                StageLink upstream = StageLink.connect(up, 0, l.address(), secret, CAP, TIMEOUT);
                return new Pair(upstream, accepted.get(20, TimeUnit.SECONDS));
            } finally {
                pool.shutdownNow();
            }
        }

        @Override
        public void close() {
            upstream.close();
            downstream.close();
        }
    }

    /** Micro-batch {@code mb}'s payload in direction {@code dir}: random raw bits (NaNs with payloads included), of varied sizes up to several MAC chunks. */
    static int[] bits(int dir, int mb) {
        SplittableRandom r = new SplittableRandom(31L * mb + dir);
        int n = mb % 7 == 0 ? 0 : mb % 5 == 0 ? CAP : r.nextInt(1, 5_000);
        int[] b = new int[n];
        for (int i = 0; i < n; i++) {
            b[i] = r.nextInt();
        }
        return b;
    }

    static ByteBuffer direct(int[] bits) {
        ByteBuffer b = Ring.allocateFloats(bits.length);
        b.asIntBuffer().put(bits);
        return b;
    }

    static int[] bits(StageLink.Frame f) {
        int[] out = new int[f.floats()];
        f.payload().asIntBuffer().get(out);
        return out;
    }

    @Test
    void activationsForwardAndGradientsBackwardAtOnceArriveBitForBit() throws Exception {
        int micro = 40;
        ExecutorService pool = Executors.newFixedThreadPool(4);
        try (Pair p = Pair.open(2, RunSecret.generate())) {
            assertEquals(2, p.upstream().stage());
            assertEquals(3, p.upstream().peerStage());
            assertEquals(3, p.downstream().stage());
            assertEquals(2, p.downstream().peerStage());
            // Upstream sends activations while it receives gradients; downstream does the reverse, each on two threads.
            Future<?> forward = pool.submit(() -> {
                for (int mb = 0; mb < micro; mb++) {
                    p.upstream().send(StageLink.Kind.ACTIVATION, mb, direct(bits(0, mb)));
                }
                p.upstream().send(StageLink.Kind.END, micro);
                return null;
            });
            Future<?> backward = pool.submit(() -> {
                for (int mb = 0; mb < micro; mb++) {
                    p.downstream().send(StageLink.Kind.GRADIENT, mb, direct(bits(1, mb)));
                }
                p.downstream().send(StageLink.Kind.END, micro);
                return null;
            });
            Future<?> activations = pool.submit(() -> {
                for (int mb = 0; mb < micro; mb++) {
                    StageLink.Frame f = p.downstream().expect(StageLink.Kind.ACTIVATION, mb, TIMEOUT);
                    assertArrayEquals(bits(0, mb), bits(f), "activation " + mb);
                }
                StageLink.Frame end = p.downstream().receive();
                assertEquals(StageLink.Kind.END, end.kind());
                assertEquals(micro, end.microBatch());
                assertEquals(0, end.floats());
                return null;
            });
            Future<?> gradients = pool.submit(() -> {
                for (int mb = 0; mb < micro; mb++) {
                    StageLink.Frame f = p.upstream().receive(TIMEOUT);
                    assertEquals(StageLink.Kind.GRADIENT, f.kind());
                    assertEquals(mb, f.microBatch());
                    assertArrayEquals(bits(1, mb), bits(f), "gradient " + mb);
                }
                p.upstream().expect(StageLink.Kind.END, micro, TIMEOUT);
                return null;
            });
            for (Future<?> f : List.of(forward, backward, activations, gradients)) {
                f.get(60, TimeUnit.SECONDS);
            }
            long forwardBytes = 0;
            long backwardBytes = 0;
            for (int mb = 0; mb < micro; mb++) {
                forwardBytes += 4L * bits(0, mb).length;
                backwardBytes += 4L * bits(1, mb).length;
            }
            StageLink.Metrics up = p.upstream().metrics();
            StageLink.Metrics down = p.downstream().metrics();
            assertEquals(new StageLink.Metrics(micro + 1, forwardBytes, micro + 1, backwardBytes, up.sendNanos(), up.receiveNanos()), up);
            assertEquals(new StageLink.Metrics(micro + 1, backwardBytes, micro + 1, forwardBytes, down.sendNanos(), down.receiveNanos()),
                    down);
            assertTrue(up.receiveNanos() > 0 && down.receiveNanos() > 0 && up.sendNanos() > 0 && down.sendNanos() > 0, up + " " + down);
        } finally {
            pool.shutdownNow();
        }
    }

    @Test
    void framesFlowOnlyTheirWayAndExpectNamesWhatWasDue() throws Exception {
        try (Pair p = Pair.open(0, RunSecret.generate())) {
            IllegalArgumentException wrongWay = assertThrows(IllegalArgumentException.class,
                    () -> p.upstream().send(StageLink.Kind.GRADIENT, 0, direct(new int[3])));
            assertEquals("stage 0 cannot send gradient frames to stage 1: they flow upstream only", wrongWay.getMessage());
            assertThrows(IllegalArgumentException.class, () -> p.downstream().send(StageLink.Kind.ACTIVATION, 0, direct(new int[3])));
            assertThrows(IllegalArgumentException.class, () -> p.upstream().send(StageLink.Kind.ACTIVATION, -1, direct(new int[3])));
            assertThrows(IllegalArgumentException.class, () -> p.upstream().send(StageLink.Kind.ACTIVATION, 0, direct(new int[CAP + 1])));
            assertThrows(IllegalArgumentException.class, () -> p.upstream().send(StageLink.Kind.END, 0, direct(new int[1])));
            assertThrows(IllegalArgumentException.class,
                    () -> p.upstream().send(StageLink.Kind.ACTIVATION, 0, ByteBuffer.allocate(8).order(java.nio.ByteOrder.LITTLE_ENDIAN)));

            p.upstream().send(StageLink.Kind.ACTIVATION, 4, direct(new int[] {1, 2}));
            java.io.UncheckedIOException e = assertThrows(java.io.UncheckedIOException.class,
                    () -> p.downstream().expect(StageLink.Kind.ACTIVATION, 3, TIMEOUT));
            assertTrue(e.getCause() instanceof Link.Unexpected, e.toString());
            assertTrue(e.getMessage().startsWith("stage 1: stage 0 (/127.0.0.1:"), e.getMessage());
            assertTrue(e.getMessage().endsWith(") sent the activation of micro-batch 4 where the activation of micro-batch 3 was due"
                    + " (out of step)"), e.getMessage());
            IllegalStateException closed = assertThrows(IllegalStateException.class, () -> p.downstream().receive());
            assertTrue(closed.getMessage().endsWith("is closed"), closed.getMessage());
        }
        try (Pair p = Pair.open(0, RunSecret.generate())) {
            p.downstream().send(StageLink.Kind.ABORT, 7);
            PeerFailureException e = assertThrows(PeerFailureException.class,
                    () -> p.upstream().expect(StageLink.Kind.GRADIENT, 7, TIMEOUT));
            assertTrue(e.getMessage().matches("stage 0: stage 1 \\(127\\.0\\.0\\.1:\\d+\\) aborted \\(at micro-batch 7\\) while stage 0"
                    + " awaited the gradient of micro-batch 7"), e.getMessage());
        }
    }

    @Test
    void aBitFlippedOnTheWayFailsTheReceiverNamingTheStageItCameFrom() throws Exception {
        RunSecret secret = RunSecret.generate();
        // What stage 0 sends stage 1: its handshake answer, then the activation's header (12 bytes), 4,000 payload bytes and tag.
        for (long flipAt : new long[] {Handshake.HELLO_BYTES + 12 + 1000, Handshake.HELLO_BYTES + 12 + 4000 + 3}) {
            StageLink.Listener l = StageLink.listen(1, 0, HOST, secret);
            ExecutorService pool = Executors.newSingleThreadExecutor();
            try (NetworkHardeningTest.TamperingProxy proxy = new NetworkHardeningTest.TamperingProxy(l.address().port(), flipAt)) {
                Future<StageLink> accepted = pool.submit(() -> l.accept(CAP, TIMEOUT));
                try (StageLink up = StageLink.connect(0, 0, new Ring.Peer(HOST, proxy.port()), secret, CAP, TIMEOUT);
                     StageLink down = accepted.get(20, TimeUnit.SECONDS)) {
                    up.send(StageLink.Kind.ACTIVATION, 0, direct(new int[1000]));
                    java.io.UncheckedIOException e = assertThrows(java.io.UncheckedIOException.class,
                            () -> down.expect(StageLink.Kind.ACTIVATION, 0, TIMEOUT));
                    assertTrue(e.getCause() instanceof Link.Tampered, e.toString());
                    assertTrue(e.getMessage().startsWith("stage 1: frame 0 (operation 4294967296, 4000 bytes) from stage 0 (/127.0.0.1:"),
                            e.getMessage());
                    assertTrue(e.getMessage().contains("failed authentication"), e.getMessage());
                    assertTrue(e.getMessage().endsWith("(while awaiting the activation of micro-batch 0)"), e.getMessage());
                }
            } finally {
                pool.shutdownNow();
                l.close();
            }
        }
    }

    @Test
    void aWrongSecretOrAWrongStagePairOrReplicaIsRefusedAtTheHandshake() throws Exception {
        RunSecret secret = RunSecret.generate();
        try (StageLink.Listener l = StageLink.listen(2, 0, HOST, secret)) {
            // Another run's stage 1, and this run's stage 0 dialing stage 2's port as if it were stage 1.
            IOException otherRun = assertThrows(IOException.class,
                    () -> StageLink.connect(1, 0, l.address(), RunSecret.generate(), CAP, Duration.ofSeconds(5)));
            assertTrue(otherRun.getMessage().startsWith("stage 1 could not link to the next stage: could not reach stage 2 (127.0.0.1:"),
                    otherRun.getMessage());
            assertTrue(otherRun.getMessage().contains("hung up during authentication"), otherRun.getMessage());
            IOException otherPair = assertThrows(IOException.class, () -> StageLink.connect(0, 0, l.address(), secret, CAP, Duration.ofSeconds(5)));
            assertTrue(otherPair.getMessage().contains("hung up during authentication"), otherPair.getMessage());
            // The right stage of another pipeline replica.
            IOException otherReplica = assertThrows(IOException.class,
                    () -> StageLink.connect(1, 1, l.address(), secret, CAP, Duration.ofSeconds(5)));
            assertTrue(otherReplica.getMessage().contains("hung up during authentication"), otherReplica.getMessage());
            assertTrue(l.refused() >= 3, "refused " + l.refused());
            // Nothing reached the listener: it times out waiting for stage 1.
            java.net.SocketTimeoutException none = assertThrows(java.net.SocketTimeoutException.class,
                    () -> l.accept(CAP, Duration.ofMillis(200)));
            assertEquals("stage 2: stage 1 did not connect within 200 ms", none.getMessage());
        }
        // The right run and pair still links.
        try (Pair p = Pair.open(1, secret)) {
            p.upstream().send(StageLink.Kind.ACTIVATION, 0, direct(new int[] {42}));
            assertArrayEquals(new int[] {42}, bits(p.downstream().expect(StageLink.Kind.ACTIVATION, 0, TIMEOUT)));
        }
    }

    /** An authenticated stage 0 speaking raw bytes to stage 1's link. */
    private static void rawHeader(long op, int length, String expected) throws Exception {
        RunSecret secret = RunSecret.generate();
        StageLink.Listener l = StageLink.listen(1, 0, HOST, secret);
        try (Socket s = SocketChannel.open(new InetSocketAddress(HOST, l.address().port())).socket()) {
            s.setSoTimeout(5_000);
            Handshake.connect(s, secret, StageLink.purpose(0, 0));
            try (StageLink down = l.accept(CAP, TIMEOUT)) {
                DataOutputStream raw = new DataOutputStream(s.getOutputStream());
                raw.writeLong(op);
                raw.writeInt(length);
                raw.flush();
                java.io.UncheckedIOException e = assertThrows(java.io.UncheckedIOException.class, () -> down.receive());
                assertTrue(e.getCause() instanceof Link.Unexpected, e.toString());
                assertTrue(e.getMessage().startsWith("stage 1: stage 0 (/127.0.0.1:"), e.getMessage());
                assertTrue(e.getMessage().endsWith(expected + " (while awaiting the next frame)"), e.getMessage());
                assertEquals(0, down.receiveCapacity(), "nothing was allocated for it");
            }
        }
    }

    @Test
    void badHeadersAreRefusedBeforeAllocating() throws Exception {
        long activation = 1L << 32;
        rawHeader(activation, Integer.MAX_VALUE, " announced a frame of 2147483647 bytes; at most " + 4 * CAP + " are allowed here");
        rawHeader(activation, 4 * CAP + 4, " announced a frame of " + (4 * CAP + 4) + " bytes; at most " + 4 * CAP + " are allowed here");
        rawHeader(activation, -4, " announced a frame of -4 bytes; at most " + 4 * CAP + " are allowed here");
        rawHeader(9L << 32, 400, " sent a frame of unknown kind 9");
        rawHeader(activation | 0x8000_0005L, 400, " sent a frame of kind activation for micro-batch " + (int) 0x8000_0005L + "; ids are >= 0");
        rawHeader(2L << 32, 400, " sent a frame of kind gradient, which flows upstream only");
        rawHeader(activation, 402, " sent 402 bytes in a frame of kind activation, which carries whole floats");
        rawHeader(3L << 32, 4, " sent 4 bytes in a frame of kind end, which carries none");
    }

    @Test
    void aSilentPeerFailsTheReceiveNamingTheStageAndWhatWasAwaited() throws Exception {
        try (Pair p = Pair.open(0, RunSecret.generate())) {
            long t0 = System.nanoTime();
            CollectiveTimeoutException e = assertThrows(CollectiveTimeoutException.class,
                    () -> p.upstream().expect(StageLink.Kind.GRADIENT, 5, Duration.ofMillis(300)));
            long ms = (System.nanoTime() - t0) / 1_000_000;
            assertTrue(ms >= 250 && ms < 5_000, ms + " ms");
            assertTrue(e.getMessage().matches("stage 0: stage 1 \\(127\\.0\\.0\\.1:\\d+\\) sent nothing for 300 ms while awaiting the gradient"
                    + " of micro-batch 5; it is stalled or dead"), e.getMessage());
        }
        try (Pair p = Pair.open(0, RunSecret.generate())) {
            CollectiveTimeoutException e = assertThrows(CollectiveTimeoutException.class, () -> p.downstream().receive(Duration.ofMillis(200)));
            assertTrue(e.getMessage().matches("stage 1: stage 0 \\(/127\\.0\\.0\\.1:\\d+\\) sent nothing for 200 ms while awaiting the next"
                    + " frame; it is stalled or dead"), e.getMessage());
        }
        // A peer that stops reading fails the writer within the timeout, naming it.
        RunSecret secret = RunSecret.generate();
        StageLink.Listener l = StageLink.listen(1, 0, HOST, secret);
        ExecutorService pool = Executors.newSingleThreadExecutor();
        try {
            Future<StageLink> accepted = pool.submit(() -> l.accept(CAP, TIMEOUT));
            try (StageLink up = StageLink.connect(0, 0, l.address(), secret, CAP, Duration.ofSeconds(1));
                 StageLink down = accepted.get(20, TimeUnit.SECONDS)) {
                ByteBuffer big = direct(new int[CAP]);
                CollectiveTimeoutException e = assertThrows(CollectiveTimeoutException.class, () -> {
                    for (int mb = 0; mb < 1000; mb++) {
                        up.send(StageLink.Kind.ACTIVATION, mb, big);
                    }
                });
                assertTrue(e.getMessage().matches("stage 0: stage 1 \\(127\\.0\\.0\\.1:\\d+\\) stopped reading: a frame of 800000 bytes was not"
                        + " taken within 1 s while sending the activation of micro-batch \\d+; it is stalled or dead"), e.getMessage());
                assertEquals(0, down.metrics().messagesReceived());
            }
        } finally {
            pool.shutdownNow();
        }
        // A peer that closes fails the other side at once, naming it.
        try (Pair p = Pair.open(0, RunSecret.generate())) {
            p.upstream().close();
            PeerFailureException e = assertThrows(PeerFailureException.class, () -> p.downstream().receive(TIMEOUT));
            assertTrue(e.getMessage().contains("closed the link while awaiting the next frame"), e.getMessage());
        }
    }

    @Test
    void theListenerBindsOnlyTheAdvertisedHostAndRefusesTheWildcard() throws Exception {
        RunSecret secret = RunSecret.generate();
        try (LogCapture logs = new LogCapture(); StageLink.Listener l = StageLink.listen(1, 0, HOST, secret)) {
            assertEquals(new Ring.Peer(HOST, l.address().port()), l.address());
            assertTrue(l.address().port() > 0);
            assertEquals(InetAddress.getByName(HOST), l.bound().getAddress());
            assertTrue(logs.lines().contains("INFO stage 1 link listening on 127.0.0.1:" + l.address().port()), logs.lines().toString());
            Optional<InetAddress> other = NetworkInterface.networkInterfaces().flatMap(NetworkInterface::inetAddresses)
                    .filter(a -> a instanceof Inet4Address && !a.isLoopbackAddress()).findFirst();
            if (other.isPresent()) {
                try (Socket s = new Socket()) {
                    assertThrows(ConnectException.class, () -> s.connect(new InetSocketAddress(other.get(), l.address().port()), 2_000));
                }
            }
        }
        IOException e = assertThrows(IOException.class, () -> StageLink.listen(1, 0, "0.0.0.0", secret));
        assertTrue(e.getMessage().contains("refusing to listen on the wildcard address"), e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> StageLink.listen(0, 0, HOST, secret));
        assertThrows(IllegalArgumentException.class, () -> StageLink.connect(0, 0, new Ring.Peer(HOST, 1), secret, -1, TIMEOUT));
    }

    @Test
    void strangersDoNotHoldTheListener() throws Exception {
        RunSecret secret = RunSecret.generate();
        StageLink.Listener l = StageLink.listen(1, 0, HOST, secret);
        try (Strangers strangers = new Strangers(HOST, l.address().port(), 100)) {
            assertEquals(100, strangers.connected());
            try (Pair p = linkThrough(l, secret)) {
                p.upstream().send(StageLink.Kind.ACTIVATION, 0, direct(new int[] {7}));
                assertArrayEquals(new int[] {7}, bits(p.downstream().expect(StageLink.Kind.ACTIVATION, 0, TIMEOUT)));
            }
            assertEquals(100, strangers.hungUp(Duration.ofSeconds(10)), "the gate hangs up on every stranger");
        }
    }

    private static Pair linkThrough(StageLink.Listener l, RunSecret secret) throws Exception {
        ExecutorService pool = Executors.newSingleThreadExecutor();
        try {
            Future<StageLink> accepted = pool.submit(() -> l.accept(CAP, TIMEOUT));
            StageLink up = StageLink.connect(0, 0, l.address(), secret, CAP, TIMEOUT);
            return new Pair(up, accepted.get(20, TimeUnit.SECONDS));
        } finally {
            pool.shutdownNow();
        }
    }
}
