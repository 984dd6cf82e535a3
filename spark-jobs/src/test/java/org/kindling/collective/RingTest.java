package org.kindling.collective;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.DataInputStream;
import java.io.IOException;
import java.net.Socket;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.SplittableRandom;
import java.util.TreeMap;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.function.Function;
import org.junit.jupiter.api.Test;
import org.kindling.models.train.StepResult;

/** The ring's collectives against sequential sums, its authentication and its timeouts; the coordinator's rendezvous. */
class RingTest {
    static final RunSecret SECRET = RunSecret.generate();

    /** Runs {@code body} on each rank of a fresh loopback ring of {@code world} ranks, in parallel; returns the results by rank. */
    static <T> List<T> onRing(int world, Duration timeout, Function<Ring, T> body) throws Exception {
        List<Ring> rings = Ring.loopback(world, timeout);
        ExecutorService pool = Executors.newFixedThreadPool(world);
        try {
            List<Future<T>> futures = new ArrayList<>();
            for (Ring ring : rings) {
                futures.add(pool.submit(() -> {
                    try (ring) {
                        return body.apply(ring);
                    }
                }));
            }
            List<T> out = new ArrayList<>();
            for (Future<T> f : futures) {
                out.add(f.get());
            }
            return out;
        } finally {
            pool.shutdownNow();
        }
    }

    static float[] data(int rank, int n) {
        SplittableRandom r = new SplittableRandom(1000 + rank);
        float[] x = new float[n];
        for (int i = 0; i < n; i++) {
            x[i] = (float) (r.nextDouble() * 2 - 1);
        }
        return x;
    }

    /** Each rank's data(rank, n) at offset 3 of a longer array: the ring must touch only [off, off+len). */
    static List<float[]> reduceInside(int world, int n) throws Exception {
        return onRing(world, Duration.ofSeconds(20), ring -> {
            float[] x = new float[n + 5];
            System.arraycopy(data(ring.rank(), n), 0, x, 3, n);
            x[0] = -7;
            x[n + 4] = 9;
            ring.allReduce(x, 3, n);
            ring.allReduce(new float[0], 0, 0);
            return x;
        });
    }

    @Test
    void aDirectBufferIsReducedInPlaceToTheSameBitsAsAnArray() throws Exception {
        int world = 3;
        int n = 300_007; // several of the link's MAC chunks per ring chunk, and uneven chunks
        List<float[]> arrays = reduceInside(world, n);
        List<float[]> direct = onRing(world, Duration.ofSeconds(20), ring -> {
            ByteBuffer b = Ring.allocateFloats(n + 5);
            FloatBuffer f = b.asFloatBuffer();
            f.put(0, -7f).put(3, data(ring.rank(), n)).put(n + 4, 9f);
            b.position(1).limit(2); // the ring addresses floats by index, whatever the buffer's position and limit
            ring.allReduce(b, 3, n);
            float[] out = new float[n + 5];
            f.get(0, out);
            return out;
        });
        for (float[] r : direct) {
            assertArrayEquals(arrays.get(0), r, "the direct buffer's sums differ from the array's");
        }
        IllegalArgumentException e = onRing(2, Duration.ofSeconds(20), ring -> assertThrows(IllegalArgumentException.class,
                () -> ring.allReduce(ByteBuffer.allocate(16).order(ByteOrder.LITTLE_ENDIAN), 0, 4))).get(0);
        assertTrue(e.getMessage().contains("direct little-endian"), e.getMessage());
    }

    @Test
    void allReduceSumsLikeASequentialSumAndEveryRankGetsTheSameBits() throws Exception {
        for (int world : new int[] {2, 3}) {
            for (int n : new int[] {1, 2, 97, 1025, 100_003}) {
                List<float[]> results = reduceInside(world, n);
                double maxErr = 0;
                double[] exactSums = new double[n];
                for (int r = 0; r < world; r++) {
                    float[] x = data(r, n);
                    for (int i = 0; i < n; i++) {
                        exactSums[i] += x[i];
                    }
                }
                for (int i = 0; i < n; i++) {
                    double exact = exactSums[i];
                    maxErr = Math.max(maxErr, Math.abs(results.get(0)[i + 3] - exact));
                }
                // A sum of W values in [-1, 1] in fp32: at most (W-1) roundings of at most W·2^-24 each.
                assertTrue(maxErr <= (world - 1) * world * Math.ulp(1f), "world " + world + ", n " + n + ": error " + maxErr);
                for (float[] r : results) {
                    assertArrayEquals(results.get(0), r, "ranks disagree at world " + world + ", n " + n);
                    assertEquals(-7f, r[0]);
                    assertEquals(9f, r[n + 4]);
                }
                assertArrayEquals(results.get(0), reduceInside(world, n).get(0), "a rerun must repeat the bits");
            }
        }
    }

    /** Each rank's own range (uneven, one empty) of a float buffer reaches every rank; floats outside the bounds stay. */
    @Test
    void allGatherOfRangesGivesEveryRankEveryRange() throws Exception {
        for (int world : new int[] {2, 3, 4}) {
            int n = 100_003;
            int[] bounds = new int[world + 1];
            for (int r = 1; r <= world; r++) {
                bounds[r] = r == 1 ? 2 : r == 2 ? 2 : 2 + (int) ((long) (n - 2) * (r - 1) / (world - 1));
            }
            bounds[world] = n;
            float[] expected = new float[n + 1];
            for (int r = 0; r < world; r++) {
                System.arraycopy(data(r, n), bounds[r], expected, bounds[r], bounds[r + 1] - bounds[r]);
            }
            expected[n] = 5f;
            List<float[]> results = onRing(world, Duration.ofSeconds(20), ring -> {
                ByteBuffer b = Ring.allocateFloats(n + 1);
                FloatBuffer f = b.asFloatBuffer();
                float[] mine = data(ring.rank(), n);
                int lo = bounds[ring.rank()];
                f.put(lo, mine, lo, bounds[ring.rank() + 1] - lo).put(n, 5f);
                ring.allGather(b, bounds);
                float[] out = new float[n + 1];
                f.get(0, out);
                return out;
            });
            for (float[] r : results) {
                assertArrayEquals(expected, r, "world " + world);
            }
        }
        IllegalArgumentException e = onRing(2, Duration.ofSeconds(20), ring -> assertThrows(IllegalArgumentException.class,
                () -> ring.allGather(Ring.allocateFloats(4), new int[] {0, 3, 2}))).get(0);
        assertTrue(e.getMessage().contains("must not decrease"), e.getMessage());
    }

    /** A reduce-scatter leaves each rank its chunk (uneven, one empty) with the bits an all-reduce over the same chunks gives. */
    @Test
    void reduceScatterLeavesEachRankItsChunkWithTheAllReducesBits() throws Exception {
        int n = 50_021;
        for (int world : new int[] {2, 3, 4}) {
            int[] bounds = new int[world + 1];
            for (int r = 1; r <= world; r++) {
                bounds[r] = r == 1 ? 0 : (int) ((long) n * r / world);
            }
            List<float[]> reduced = onRing(world, Duration.ofSeconds(20), ring -> {
                ByteBuffer b = Ring.allocateFloats(n);
                b.asFloatBuffer().put(data(ring.rank(), n));
                ring.allReduce(b, bounds);
                float[] out = new float[n];
                b.asFloatBuffer().get(out);
                return out;
            });
            List<float[]> scattered = onRing(world, Duration.ofSeconds(20), ring -> {
                ByteBuffer b = Ring.allocateFloats(n);
                b.asFloatBuffer().put(data(ring.rank(), n));
                ring.reduceScatter(b, bounds);
                float[] out = new float[n];
                b.asFloatBuffer().get(out);
                return out;
            });
            double[] exact = new double[n];
            for (int r = 0; r < world; r++) {
                float[] x = data(r, n);
                for (int i = 0; i < n; i++) {
                    exact[i] += x[i];
                }
            }
            for (int r = 0; r < world; r++) {
                assertArrayEquals(reduced.get(0), reduced.get(r), "world " + world + ": ranks agree");
                for (int i = bounds[r]; i < bounds[r + 1]; i++) {
                    assertEquals(Float.floatToRawIntBits(reduced.get(0)[i]), Float.floatToRawIntBits(scattered.get(r)[i]),
                            "world " + world + ", rank " + r + ", element " + i);
                }
            }
            for (int i = 0; i < n; i++) {
                assertTrue(Math.abs(reduced.get(0)[i] - exact[i]) <= (world - 1) * world * Math.ulp(1f), "element " + i);
            }
        }
    }

    @Test
    void allGatherReturnsEveryRanksBytesByRank() throws Exception {
        List<byte[][]> results = onRing(3, Duration.ofSeconds(20), ring -> ring.allGather(new byte[ring.rank() * 3 + 1]));
        for (byte[][] all : results) {
            for (int r = 0; r < 3; r++) {
                assertEquals(r * 3 + 1, all[r].length);
            }
        }
    }

    @Test
    void aStrangerIsRefusedAndTheRingStillForms() throws Exception {
        Ring.Listener s0 = Ring.listen(0, "127.0.0.1", SECRET);
        Ring.Listener s1 = Ring.listen(1, "127.0.0.1", SECRET);
        List<Ring.Peer> peers = List.of(s0.address(), s1.address());
        ExecutorService pool = Executors.newFixedThreadPool(2);
        try {
            Future<float[]> rank0 = pool.submit(() -> {
                try (Ring ring = Ring.connect(0, peers, s0, Duration.ofSeconds(20))) {
                    float[] x = {1f};
                    ring.allReduce(x, 0, 1);
                    return x;
                }
            });
            // Before rank 1 joins, a stranger with the wrong secret and one that speaks another protocol reach rank 0.
            try (Socket stranger = new Socket("127.0.0.1", s0.address().port())) {
                stranger.setSoTimeout(5000);
                IOException e = assertThrows(IOException.class, () -> Handshake.connect(stranger, RunSecret.generate(), Ring.PURPOSE));
                assertTrue(e.getMessage().contains("authentication"), e.toString());
            }
            try (Socket garbage = new Socket("127.0.0.1", s0.address().port())) {
                garbage.setSoTimeout(5000);
                garbage.getOutputStream().write("GET / HTTP/1.0\r\n\r\n".getBytes());
                DataInputStream in = new DataInputStream(garbage.getInputStream());
                in.readInt();
                in.readNBytes(32);
                assertEquals(-1, in.read(), "rank 0 must hang up on a peer that fails the handshake");
            }
            Future<float[]> rank1 = pool.submit(() -> {
                try (Ring ring = Ring.connect(1, peers, s1, Duration.ofSeconds(20))) {
                    float[] x = {2f};
                    ring.allReduce(x, 0, 1);
                    return x;
                }
            });
            assertEquals(3f, rank0.get()[0]);
            assertEquals(3f, rank1.get()[0]);
            assertEquals(2, s0.refused());
        } finally {
            pool.shutdownNow();
        }
    }

    @Test
    void aStalledRankTripsTheTimeoutWithAnErrorNamingIt() throws Exception {
        long t0 = System.nanoTime();
        List<String> errors = onRing(2, Duration.ofMillis(1500), ring -> {
            if (ring.rank() == 1) {
                sleep(4000); // stops answering
                return "";
            }
            CollectiveTimeoutException e = assertThrows(CollectiveTimeoutException.class,
                    () -> ring.allReduce(new float[10], 0, 10));
            return e.getMessage();
        });
        String msg = errors.get(0);
        assertTrue(msg.contains("rank 1") && msg.contains("sent nothing for 1 s") && msg.contains("stalled or dead"), msg);
        assertTrue((System.nanoTime() - t0) / 1e9 < 10);
    }

    @Test
    void aRankThatDiesFailsItsNeighbourAtOnce() throws Exception {
        List<String> errors = onRing(2, Duration.ofSeconds(30), ring -> {
            if (ring.rank() == 1) {
                ring.close();
                return "";
            }
            PeerFailureException e = assertThrows(PeerFailureException.class, () -> ring.allReduce(new float[10], 0, 10));
            return e.getMessage();
        });
        assertTrue(errors.get(0).contains("rank 1"), errors.get(0));
    }

    static void sleep(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    /** A step with named metrics, NaN and -0.0 among them: the wire carries every double bit for bit. */
    static final StepResult REPORTED = new StepResult(5, 2.5, 1e-3, 0.7, 1024, 0.1,
            new TreeMap<>(Map.of("moe_balance_loss", 0.0123, "z_loss", Double.NaN, "dropped_fraction", -0.0)));

    @Test
    void coordinatorRendezvousNamesPeersAndResumeAndStreamsSteps() throws Exception {
        List<StepResult> steps = new CopyOnWriteArrayList<>();
        try (Coordinator c = new Coordinator("127.0.0.1", 2, SECRET, Duration.ofSeconds(20), () -> Optional.of("step-4"), steps::add)) {
            ExecutorService pool = Executors.newFixedThreadPool(2);
            try {
                List<Future<Coordinator.Rendezvous>> fs = new ArrayList<>();
                for (int r = 0; r < 2; r++) {
                    int rank = r;
                    fs.add(pool.submit(() -> {
                        try (Coordinator.Client cl = Coordinator.Client.connect("127.0.0.1", c.port(), SECRET, Duration.ofSeconds(20))) {
                            Coordinator.Rendezvous rv = cl.hello(0, rank, new Ring.Peer("h" + rank, 1000 + rank));
                            if (rank == 0) {
                                cl.report(new StepResult(4, 2.75, 1e-3, 0.8, 1024, 0.1));
                                cl.report(REPORTED);
                            }
                            return rv;
                        }
                    }));
                }
                for (Future<Coordinator.Rendezvous> f : fs) {
                    Coordinator.Rendezvous rv = f.get();
                    assertEquals(List.of(new Ring.Peer("h0", 1000), new Ring.Peer("h1", 1001)), rv.peers());
                    assertEquals(Optional.of("step-4"), rv.resume());
                }
            } finally {
                pool.shutdownNow();
            }
            long deadline = System.nanoTime() + 5_000_000_000L;
            while (steps.size() < 2 && System.nanoTime() < deadline) {
                sleep(10);
            }
            assertEquals(List.of(new StepResult(4, 2.75, 1e-3, 0.8, 1024, 0.1), REPORTED), steps);
            assertEquals(List.of("dropped_fraction", "moe_balance_loss", "z_loss"), List.copyOf(steps.get(1).metrics().keySet()));
        }
    }

    /** Joins stage attempt {@code attempt} as rank 0 of 1 over a raw link and sends one STEP message written by {@code body}. */
    private static void sendRawStep(int port, int attempt, IoWriter body) throws Exception {
        try (Link link = Link.dial("127.0.0.1", port, SECRET, Coordinator.PURPOSE, "the coordinator", Duration.ofSeconds(5),
                System.nanoTime() + 5_000_000_000L)) {
            java.io.ByteArrayOutputStream bytes = new java.io.ByteArrayOutputStream();
            java.io.DataOutputStream out = new java.io.DataOutputStream(bytes);
            out.writeInt(attempt);
            out.writeInt(0);
            out.writeUTF("h0");
            out.writeInt(1000);
            link.send(Coordinator.HELLO, bytes.toByteArray(), 0, bytes.size());
            link.readTimeout(Duration.ofSeconds(20));
            link.receive(-1, -1, Coordinator.MAX_MESSAGE);
            bytes.reset();
            out.writeInt(5);
            out.writeDouble(2.5);
            out.writeDouble(1e-3);
            out.writeDouble(0.7);
            out.writeLong(1024);
            out.writeDouble(0.1);
            body.write(out);
            link.send(Coordinator.STEP, bytes.toByteArray(), 0, bytes.size());
        }
    }

    interface IoWriter {
        void write(java.io.DataOutputStream out) throws IOException;
    }

    @Test
    void aStepWithTooManyMetricsOrABadNameIsRefusedNamingTheRank() throws Exception {
        List<StepResult> steps = new CopyOnWriteArrayList<>();
        try (LogCapture logs = new LogCapture();
             Coordinator c = new Coordinator("127.0.0.1", 1, SECRET, Duration.ofSeconds(20), Optional::empty, steps::add)) {
            // The count alone is refused: nothing of the claimed 65 pairs follows, nor is anything allocated for them.
            sendRawStep(c.port(), 0, out -> out.writeInt(StepResult.MAX_METRICS + 1));
            logs.await("rank 0 reported step 5 with 65 metrics; at most 64", Duration.ofSeconds(10));
            sendRawStep(c.port(), 1, out -> {
                out.writeInt(1);
                out.writeUTF("Moe-Loss");
                out.writeDouble(1.0);
            });
            logs.await("rank 0 reported a bad step 5: metric name 'Moe-Loss' must match", Duration.ofSeconds(10));
            sendRawStep(c.port(), 2, out -> out.writeInt(-1));
            logs.await("rank 0 reported step 5 with -1 metrics", Duration.ofSeconds(10));
        }
        assertEquals(List.of(), steps);
    }

    @Test
    void coordinatorRefusesStrangersAndTimesOutAnIncompleteRendezvous() throws Exception {
        try (Coordinator c = new Coordinator("127.0.0.1", 2, SECRET, Duration.ofSeconds(1), Optional::empty, r -> { })) {
            IOException e = assertThrows(IOException.class,
                    () -> Coordinator.Client.connect("127.0.0.1", c.port(), RunSecret.generate(), Duration.ofSeconds(5)).close());
            assertTrue(e.getMessage().contains("coordinator"), e.getMessage());
            long deadline = System.nanoTime() + 5_000_000_000L;
            while (c.refused() < Link.DIAL_ATTEMPTS && System.nanoTime() < deadline) {
                sleep(10);
            }
            // A client dropped before authenticating tries again a few times, then gives up.
            assertEquals(Link.DIAL_ATTEMPTS, c.refused());
            try (Coordinator.Client cl = Coordinator.Client.connect("127.0.0.1", c.port(), SECRET, Duration.ofSeconds(5))) {
                IOException t = assertThrows(IOException.class, () -> cl.hello(0, 1, new Ring.Peer("h", 1)));
                assertTrue(t.getMessage().contains("timed out") && t.getMessage().contains("ranks [0] of 2 never arrived"),
                        t.getMessage());
            }
        }
    }

    @Test
    void aRetriedAttemptLogsItsCheckpointAndTheWorkerThePreviousAttemptLost() throws Exception {
        try (LogCapture logs = new LogCapture();
             Coordinator c = new Coordinator("127.0.0.1", 2, SECRET, Duration.ofSeconds(20), () -> Optional.of("step-4"), r -> { })) {
            ExecutorService pool = Executors.newFixedThreadPool(2);
            try {
                // Attempt 0: rank 0 fails as an echo; rank 1's executor dies without a word (its connection just ends).
                Future<?> rank0 = pool.submit(() -> {
                    try (Coordinator.Client cl = Coordinator.Client.connect("127.0.0.1", c.port(), SECRET, Duration.ofSeconds(20))) {
                        cl.hello(0, 0, new Ring.Peer("h0", 1000));
                        cl.failed("rank 0: rank 1 closed the ring", true);
                    }
                    return null;
                });
                try (Link rank1 = Link.dial("127.0.0.1", c.port(), SECRET, Coordinator.PURPOSE, "the coordinator", Duration.ofSeconds(5),
                        System.nanoTime() + 5_000_000_000L)) {
                    java.io.ByteArrayOutputStream hello = new java.io.ByteArrayOutputStream();
                    java.io.DataOutputStream out = new java.io.DataOutputStream(hello);
                    out.writeInt(0);
                    out.writeInt(1);
                    out.writeUTF("h1");
                    out.writeInt(1001);
                    rank1.send(Coordinator.HELLO, hello.toByteArray(), 0, hello.size());
                    rank1.readTimeout(Duration.ofSeconds(20));
                    rank1.receive(-1, -1, Coordinator.MAX_MESSAGE);
                }
                rank0.get(20, java.util.concurrent.TimeUnit.SECONDS);
                sleep(300); // the coordinator notices the vanished connection
                List<Future<Coordinator.Rendezvous>> retry = new ArrayList<>();
                for (int r = 0; r < 2; r++) {
                    int rank = r;
                    retry.add(pool.submit(() -> {
                        try (Coordinator.Client cl = Coordinator.Client.connect("127.0.0.1", c.port(), SECRET, Duration.ofSeconds(20))) {
                            return cl.hello(1, rank, new Ring.Peer("h" + rank, 2000 + rank));
                        }
                    }));
                }
                for (Future<Coordinator.Rendezvous> f : retry) {
                    assertEquals(Optional.of("step-4"), f.get(20, java.util.concurrent.TimeUnit.SECONDS).resume());
                }
            } finally {
                pool.shutdownNow();
            }
            assertEquals(List.of("INFO stage attempt 1 resumes from checkpoint step-4 after stage attempt 0 lost rank 1 (h1): "
                    + "its connection to the driver ended without a word (executor lost)"),
                    logs.lines().stream().filter(l -> l.contains("resumes")).toList());
        }
    }
}
