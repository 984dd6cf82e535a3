package org.kindling.collective;

import java.io.IOException;
import java.io.InputStream;
import java.net.ConnectException;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;

/** Connections that never authenticate: every other one stays silent, the rest send garbage. Each stays open until the server hangs up. */
public final class Strangers implements AutoCloseable {
    private final List<Socket> sockets = new ArrayList<>();

    /** Opens up to {@code count} connections to {@code host:port}, silent and garbage-sending in turn; those refused (the port closed) are skipped. */
    public Strangers(String host, int port, int count) throws IOException {
        SplittableRandom random = new SplittableRandom(port);
        for (int i = 0; i < count; i++) {
            Socket s = new Socket();
            try {
                s.connect(new InetSocketAddress(host, port), 5_000);
            } catch (ConnectException | SocketTimeoutException e) {
                s.close(); // a ring's port closes once its ring forms
                continue;
            }
            sockets.add(s);
            if (i % 2 == 1) {
                byte[] junk = new byte[64 + random.nextInt(512)];
                random.nextBytes(junk);
                s.getOutputStream().write(junk);
            }
        }
    }

    /** How many connected. */
    public int connected() {
        return sockets.size();
    }

    /** Waits (at most {@code within} in all) until the server hung up on each; returns how many it hung up on. */
    public int hungUp(Duration within) throws IOException {
        long deadline = System.nanoTime() + within.toNanos();
        int closed = 0;
        byte[] sink = new byte[4096];
        for (Socket s : sockets) {
            InputStream in = s.getInputStream();
            try {
                while (true) {
                    s.setSoTimeout((int) Math.max(1, (deadline - System.nanoTime()) / 1_000_000));
                    if (in.read(sink) < 0) {
                        closed++;
                        break;
                    }
                }
            } catch (SocketTimeoutException e) {
                return closed;
            } catch (IOException e) {
                closed++; // reset by the server: hung up as well
            }
        }
        return closed;
    }

    @Override
    public void close() throws IOException {
        for (Socket s : sockets) {
            s.close();
        }
    }
}
