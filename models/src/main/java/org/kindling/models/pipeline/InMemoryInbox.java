package org.kindling.models.pipeline;

import java.time.Duration;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.TimeUnit;

/** A {@link StageInbox} within one process: a bounded queue that both neighbouring stages' threads send into. */
public final class InMemoryInbox implements StageInbox {
    private final String name;
    private final BlockingQueue<Message> queue;
    private volatile boolean closed;

    /**
     * @param name says which stage, for errors
     * @param capacity messages it holds untaken; a step of M micro-batches never needs more than 2·M
     */
    public InMemoryInbox(String name, int capacity) {
        if (capacity < 1) {
            throw new IllegalArgumentException(name + ": inbox capacity must be >= 1, got " + capacity);
        }
        this.name = name;
        this.queue = new ArrayBlockingQueue<>(capacity);
    }

    /** The sending end that delivers {@code kind} messages here. */
    public StageSender sender(Kind kind) {
        return (mb, data, timeout) -> {
            boolean queued = false;
            try {
                if (closed) {
                    throw new PipelineException(name + ": closed, " + kind + " of micro-batch " + mb + " not delivered");
                }
                queued = queue.offer(new Message(kind, mb, data), timeout.toNanos(), TimeUnit.NANOSECONDS);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new PipelineException(name + ": interrupted sending " + kind + " of micro-batch " + mb, e);
            } finally {
                if (!queued) {
                    data.close();
                }
            }
            if (!queued) {
                throw new PipelineException(name + ": no room for " + kind + " of micro-batch " + mb + " within "
                        + timeout.toMillis() + " ms (" + queue.size() + " messages untaken)");
            }
            if (closed) {
                // Closed while this message went in: free it as close would have.
                close();
            }
        };
    }

    @Override
    public Message poll(Duration timeout) {
        try {
            return queue.poll(timeout.toNanos(), TimeUnit.NANOSECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new PipelineException(name + ": interrupted waiting for a message", e);
        }
    }

    @Override
    public void close() {
        closed = true;
        for (Message m; (m = queue.poll()) != null; ) {
            m.data().close();
        }
    }
}
