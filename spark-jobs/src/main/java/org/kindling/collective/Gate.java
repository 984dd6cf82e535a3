package org.kindling.collective;

import java.io.IOException;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.SocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.ClosedSelectorException;
import java.nio.channels.SelectionKey;
import java.nio.channels.Selector;
import java.nio.channels.ServerSocketChannel;
import java.nio.channels.SocketChannel;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * The accepting side of a listening socket: one thread accepts every connection at once and runs
 * the {@link Handshake} of all of them concurrently, without blocking, so connections that never
 * authenticate cost neither a thread nor the time of real peers. Before it authenticates, a
 * connection has {@link #DEADLINE_NANOS} in all and is one of at most {@link #MAX_PENDING}; when a
 * new one arrives at the cap the oldest is dropped (it had the most time). Authenticated
 * connections go, in blocking mode, to the handler, which must not block this thread.
 * Refusals are counted and logged (the first few, then at every power of two, so a flood cannot
 * flood the log).
 */
final class Gate implements AutoCloseable {
    /** How long a connection may take to authenticate: a real peer needs two round trips. */
    static final long DEADLINE_NANOS = 1_500_000_000L;
    /** Connections authenticating at once. */
    static final int MAX_PENDING = 256;
    private static final System.Logger LOG = System.getLogger(Gate.class.getName());

    /** Receives an authenticated connection, on the gate's thread. */
    interface Handler {
        void accept(Socket socket, Handshake.Session session);
    }

    private final class Pending {
        final SocketChannel channel;
        final SocketAddress from;
        final long deadline = System.nanoTime() + DEADLINE_NANOS;
        final Handshake.Acceptor handshake = new Handshake.Acceptor(secret, purpose);
        final ByteBuffer answer = ByteBuffer.allocate(Handshake.HELLO_BYTES);
        ByteBuffer out;
        boolean proven;
        SelectionKey key;

        Pending(SocketChannel channel) throws IOException {
            this.channel = channel;
            this.from = channel.getRemoteAddress();
            this.out = handshake.greeting();
        }
    }

    private final String name;
    private final ServerSocketChannel server;
    private final Selector selector;
    private final RunSecret secret;
    private final String purpose;
    private final Handler handler;
    private final LinkedHashSet<Pending> pending = new LinkedHashSet<>();
    private final AtomicInteger refused = new AtomicInteger();
    private final Thread thread;
    private volatile boolean closed;

    /**
     * Listens on {@code host} (never on every interface), on a free port, and starts accepting.
     *
     * @param name how logs name this listener, e.g. {@code coordinator}
     */
    Gate(String name, String host, RunSecret secret, String purpose, Handler handler) throws IOException {
        this.name = name;
        this.secret = secret;
        this.purpose = purpose;
        this.handler = handler;
        InetSocketAddress at = new InetSocketAddress(host, 0);
        if (at.isUnresolved()) {
            throw new IOException(name + ": cannot listen on " + host + ": the host name does not resolve");
        }
        if (at.getAddress().isAnyLocalAddress()) {
            throw new IOException(name + ": refusing to listen on the wildcard address " + host + "; give the host Spark advertises");
        }
        this.server = ServerSocketChannel.open();
        try {
            server.bind(at, 128);
            server.configureBlocking(false);
            this.selector = Selector.open();
            server.register(selector, SelectionKey.OP_ACCEPT);
        } catch (IOException e) {
            server.close();
            throw new IOException(name + ": cannot listen on " + host + ": " + e.getMessage(), e);
        }
        this.thread = new Thread(this::run, "kindling-gate-" + name.replace(' ', '-'));
        thread.setDaemon(true);
        thread.start();
    }

    /** The address this gate listens on. */
    InetSocketAddress address() {
        return (InetSocketAddress) server.socket().getLocalSocketAddress();
    }

    /** Connections refused so far: bad greeting, failed authentication, too slow, or dropped at the cap. */
    int refused() {
        return refused.get();
    }

    private void run() {
        try {
            while (!closed) {
                long wait = 0;
                if (!pending.isEmpty()) {
                    wait = Math.max(1, (pending.iterator().next().deadline - System.nanoTime()) / 1_000_000 + 1);
                }
                selector.select(wait);
                List<Pending> done = new ArrayList<>();
                for (Iterator<SelectionKey> it = selector.selectedKeys().iterator(); it.hasNext(); ) {
                    SelectionKey key = it.next();
                    it.remove();
                    if (!key.isValid()) {
                        continue;
                    }
                    if (key.isAcceptable()) {
                        acceptAll();
                    } else if (step((Pending) key.attachment())) {
                        done.add((Pending) key.attachment());
                    }
                }
                expire();
                if (!done.isEmpty()) {
                    handOver(done);
                }
            }
        } catch (ClosedSelectorException e) {
            // closed
        } catch (IOException | RuntimeException e) {
            if (!closed) {
                LOG.log(System.Logger.Level.WARNING, name + " stopped accepting connections: " + e);
            }
        } finally {
            for (Pending p : pending) {
                closeQuietly(p.channel);
            }
            pending.clear();
        }
    }

    private void acceptAll() throws IOException {
        SocketChannel c;
        while ((c = server.accept()) != null) {
            try {
                c.configureBlocking(false);
                c.socket().setTcpNoDelay(true);
                Pending p = new Pending(c);
                if (pending.size() >= MAX_PENDING) {
                    Pending oldest = pending.iterator().next();
                    refuse(oldest, "dropped: " + MAX_PENDING + " connections were waiting to authenticate");
                }
                c.write(p.out);
                p.key = c.register(selector, p.out.hasRemaining() ? SelectionKey.OP_WRITE : SelectionKey.OP_READ, p);
                pending.add(p);
            } catch (IOException e) {
                refused.incrementAndGet();
                closeQuietly(c);
            }
        }
    }

    /** Advances one connection's handshake; true once it has authenticated and received our proof. */
    private boolean step(Pending p) {
        try {
            if (p.out.hasRemaining()) {
                p.channel.write(p.out);
                if (p.out.hasRemaining()) {
                    return false;
                }
                if (p.proven) {
                    return true;
                }
                p.key.interestOps(SelectionKey.OP_READ);
                return false;
            }
            // The answer buffer holds exactly the handshake, so nothing after it is consumed here.
            if (p.channel.read(p.answer) < 0) {
                refuse(p, "closed the connection before authenticating");
                return false;
            }
            if (!Handshake.Acceptor.plausible(p.answer)) {
                refuse(p, "not a Kindling peer (bad greeting)");
                return false;
            }
            if (p.answer.hasRemaining()) {
                return false;
            }
            p.out = p.handshake.answer(p.answer);
            p.proven = true;
            p.channel.write(p.out);
            if (p.out.hasRemaining()) {
                p.key.interestOps(SelectionKey.OP_WRITE);
                return false;
            }
            return true;
        } catch (IOException e) {
            refuse(p, e.getMessage());
            return false;
        }
    }

    private void expire() {
        long now = System.nanoTime();
        while (!pending.isEmpty()) {
            Pending p = pending.iterator().next();
            if (p.deadline - now > 0) {
                return;
            }
            refuse(p, "did not authenticate within " + DEADLINE_NANOS / 1_000_000 + " ms");
        }
    }

    /** Returns authenticated connections to blocking mode (which needs their keys flushed from the selector) and hands them on. */
    private void handOver(List<Pending> done) throws IOException {
        for (Pending p : done) {
            pending.remove(p);
            p.key.cancel();
        }
        selector.selectNow();
        for (Pending p : done) {
            try {
                p.channel.configureBlocking(true);
                handler.accept(p.channel.socket(), p.handshake.session());
            } catch (IOException | RuntimeException e) {
                LOG.log(System.Logger.Level.WARNING, name + ": could not take over the authenticated connection from " + p.from + ": " + e);
                closeQuietly(p.channel);
            }
        }
    }

    private void refuse(Pending p, String why) {
        pending.remove(p);
        if (p.key != null) {
            p.key.cancel();
        }
        closeQuietly(p.channel);
        int n = refused.incrementAndGet();
        if (n <= 3 || Integer.bitCount(n) == 1) {
            LOG.log(System.Logger.Level.WARNING, name + " refused a connection from " + p.from + ": " + why
                    + (n > 3 ? " (" + n + " refused so far; only some are logged)" : ""));
        }
    }

    private static void closeQuietly(java.io.Closeable c) {
        try {
            c.close();
        } catch (IOException ignored) {
            // refusing or shutting down either way
        }
    }

    @Override
    public void close() {
        closed = true;
        closeQuietly(server);
        selector.wakeup();
        try {
            thread.join(5_000);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        closeQuietly(selector);
    }
}
