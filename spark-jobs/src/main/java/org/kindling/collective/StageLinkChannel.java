package org.kindling.collective;

import java.nio.ByteBuffer;
import java.time.Duration;
import org.kindling.models.pipeline.StageChannel;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;

/**
 * One direction of a {@link StageLink} as a pipeline {@link StageChannel}: {@link
 * StageLink.Kind#ACTIVATION} frames downstream or {@link StageLink.Kind#GRADIENT} frames upstream,
 * each a [rows, {@code cols}] tensor received onto {@code device}. The link's frames carry the
 * micro-batch id and its checks (cap, integrity, deadline); a received frame of another kind or
 * micro-batch fails the step as out of step. The link is its owner's to close; closing a channel
 * frees only its staging buffer.
 */
public final class StageLinkChannel implements StageChannel {
    private final StageLink link;
    private final StageLink.Kind kind;
    private final Device device;
    private final int cols;
    private ByteBuffer staging = Ring.allocateFloats(0);

    public StageLinkChannel(StageLink link, StageLink.Kind kind, Device device, int cols) {
        if (!kind.carriesData()) {
            throw new IllegalArgumentException("a stage channel carries tensors, not " + kind.label() + " frames");
        }
        if (cols < 1) {
            throw new IllegalArgumentException("a stage channel's tensors need at least 1 column, got " + cols);
        }
        this.link = link;
        this.kind = kind;
        this.device = device;
        this.cols = cols;
    }

    @Override
    public void send(int microBatch, Tensor data, Duration timeout) {
        try (data) {
            float[] values = data.toFloatArray();
            if (staging.capacity() < (long) values.length * Float.BYTES) {
                staging = Ring.allocateFloats(values.length);
            }
            staging.clear();
            staging.asFloatBuffer().put(values);
            staging.limit(values.length * Float.BYTES);
            link.send(kind, microBatch, staging);
        }
    }

    @Override
    public Tensor receive(int microBatch, Duration timeout) {
        StageLink.Frame f = link.expect(kind, microBatch, timeout);
        int n = f.floats();
        if (n % cols != 0) {
            throw new IllegalStateException("stage " + link.stage() + ": the " + kind.label() + " of micro-batch " + microBatch
                    + " from stage " + link.peerStage() + " holds " + n + " floats, not rows of " + cols);
        }
        float[] values = new float[n];
        f.payload().duplicate().order(java.nio.ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(values);
        return device.allocate(DType.F32, n / cols, cols).copyFrom(values);
    }

    @Override
    public void close() {
        staging = Ring.allocateFloats(0);
    }
}
