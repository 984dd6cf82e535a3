package org.kindling.models.pipeline;

import java.time.Duration;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.TimeUnit;
import org.kindling.ops.Tensor;

/** A {@link StageChannel} within one process: a bounded queue of tensors handed from one stage's thread to another's. */
public final class InMemoryChannel implements StageChannel {
    private record Message(int microBatch, Tensor data) {
    }

    private final String name;
    private final BlockingQueue<Message> queue;

    /**
     * @param name says which stages and direction, for errors
     * @param capacity messages it holds unreceived; a schedule of M micro-batches never needs more than M
     */
    public InMemoryChannel(String name, int capacity) {
        if (capacity < 1) {
            throw new IllegalArgumentException(name + ": channel capacity must be >= 1, got " + capacity);
        }
        this.name = name;
        this.queue = new ArrayBlockingQueue<>(capacity);
    }

    @Override
    public void send(int microBatch, Tensor data, Duration timeout) {
        boolean queued = false;
        try {
            queued = queue.offer(new Message(microBatch, data), timeout.toNanos(), TimeUnit.NANOSECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new PipelineException(name + ": interrupted sending micro-batch " + microBatch, e);
        } finally {
            if (!queued) {
                data.close();
            }
        }
        if (!queued) {
            throw new PipelineException(name + ": no room for micro-batch " + microBatch + " within " + timeout.toMillis()
                    + " ms (" + queue.size() + " messages unreceived)");
        }
    }

    @Override
    public Tensor receive(int microBatch, Duration timeout) {
        Message m;
        try {
            m = queue.poll(timeout.toNanos(), TimeUnit.NANOSECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new PipelineException(name + ": interrupted waiting for micro-batch " + microBatch, e);
        }
        if (m == null) {
            throw new PipelineException(name + ": micro-batch " + microBatch + " did not arrive within " + timeout.toMillis() + " ms");
        }
        if (m.microBatch() != microBatch) {
            m.data().close();
            throw new PipelineException(name + ": expected micro-batch " + microBatch + ", got " + m.microBatch());
        }
        return m.data();
    }

    @Override
    public void close() {
        for (Message m; (m = queue.poll()) != null; ) {
            m.data().close();
        }
    }
}
