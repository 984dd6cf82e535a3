package org.kindling.collective;

import java.io.IOException;
import java.io.InterruptedIOException;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.TimeUnit;

/**
 * A {@link Gate} whose authenticated connections wait in a bounded queue until their owner (a ring
 * or a stage link listener) takes them; one that finds the queue full is closed and logged, so a
 * flood of authenticated peers holds no more than {@code capacity} sockets.
 */
final class Arrivals implements AutoCloseable {
    private static final System.Logger LOG = System.getLogger(Arrivals.class.getName());

    /** An authenticated connection and its session keys. */
    record Arrival(Socket socket, Handshake.Session session) {
    }

    private final BlockingQueue<Arrival> queue;
    private final Gate gate;

    /**
     * Listens on {@code host} for {@code purpose} under {@code secret}.
     *
     * @param name what is listening, for logs and errors (e.g. "rank 0 ring")
     * @param whenFull why a connection was dropped when the queue is full, for the log
     */
    Arrivals(String name, String host, RunSecret secret, String purpose, int capacity, String whenFull) throws IOException {
        this.queue = new ArrayBlockingQueue<>(capacity);
        this.gate = new Gate(name, host, secret, purpose, (socket, session) -> {
            if (!queue.offer(new Arrival(socket, session))) {
                LOG.log(System.Logger.Level.WARNING, name + " dropped an authenticated connection from "
                        + socket.getRemoteSocketAddress() + ": " + whenFull);
                close(socket);
            }
        });
    }

    /** The socket address the gate is bound to. */
    InetSocketAddress address() {
        return gate.address();
    }

    /** Connections refused so far (see {@link Gate#refused}). */
    int refused() {
        return gate.refused();
    }

    /** The next arrival within {@code millis}, or null; {@code what} names the wait if it is interrupted. */
    Arrival poll(long millis, String what) throws InterruptedIOException {
        try {
            return queue.poll(millis, TimeUnit.MILLISECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new InterruptedIOException("interrupted while waiting for " + what);
        }
    }

    @Override
    public void close() {
        gate.close();
        for (Arrival a; (a = queue.poll()) != null; ) {
            close(a.socket());
        }
    }

    static void close(Socket s) {
        try {
            s.close();
        } catch (IOException ignored) {
            // refusing either way
        }
    }
}
