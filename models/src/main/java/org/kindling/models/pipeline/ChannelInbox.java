package org.kindling.models.pipeline;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicReference;

/**
 * A message-driven stage's inbox fed by its two receiving channels, as a stage whose neighbours are
 * other processes has them: a thread per channel takes that channel's next {@code count} messages
 * (micro-batches 0, 1, … in order, as a link delivers them) and hands each to one queue, so the
 * stage sees activations and gradients in the order they arrived. A reader's failure (a late,
 * foreign or out-of-step message, a peer's abort) is what the next {@link #poll} throws. Closing
 * stops the readers and frees what was not taken.
 */
public final class ChannelInbox implements StageInbox {
    private final InMemoryInbox queue;
    private final List<Thread> readers = new ArrayList<>();
    private final AtomicReference<RuntimeException> failure = new AtomicReference<>();
    private final Duration timeout;

    /**
     * @param activations the channel from the previous stage, or null on the first stage
     * @param gradients the channel from the next stage, or null on the last stage
     * @param count messages to take from each (the step's micro-batches)
     * @param timeout the longest a reader waits for a message, or for room to queue it
     */
    public ChannelInbox(String name, StageChannel activations, StageChannel gradients, int count, Duration timeout) {
        this.queue = new InMemoryInbox(name, Math.max(1, 2 * count));
        this.timeout = timeout;
        read(name, activations, Kind.ACTIVATION, count);
        read(name, gradients, Kind.GRADIENT, count);
    }

    private void read(String name, StageChannel channel, Kind kind, int count) {
        if (channel == null) {
            return;
        }
        StageSender into = queue.sender(kind);
        Thread t = new Thread(() -> {
            try {
                for (int mb = 0; mb < count; mb++) {
                    into.send(mb, channel.receive(mb, timeout), timeout);
                }
            } catch (RuntimeException e) {
                failure.compareAndSet(null, e);
            }
        }, "kindling-" + name + "-" + kind.name().toLowerCase(java.util.Locale.ROOT));
        t.setDaemon(true);
        readers.add(t);
        t.start();
    }

    @Override
    public Message poll(Duration wait) {
        // What arrived before a reader failed still counts; then its failure is the stage's.
        Message m = queue.poll(Duration.ZERO);
        if (m != null) {
            return m;
        }
        RuntimeException e = failure.get();
        if (e != null) {
            throw e;
        }
        long deadline = System.nanoTime() + wait.toNanos();
        while (true) {
            long left = deadline - System.nanoTime();
            m = queue.poll(Duration.ofNanos(Math.max(0, Math.min(left, 50_000_000L))));
            if (m != null || left <= 0) {
                return m;
            }
            e = failure.get();
            if (e != null) {
                throw e;
            }
        }
    }

    /** Stops the readers (each at most the timeout) and frees the messages not taken. */
    @Override
    public void close() {
        for (Thread t : readers) {
            t.interrupt();
        }
        for (Thread t : readers) {
            try {
                t.join(timeout.toMillis());
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                break;
            }
        }
        queue.close();
    }
}
