package org.kindling.models.mixers;

import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;

/**
 * The decoding state of the attention-like mixers: the keys and values of every token each
 * sequence has seen, per sequence k, v [capacity, width], grown by doubling. A mixer with more
 * state per sequence extends it and adds its own tensors to {@link #bytes} and {@link #close}.
 */
public class KvCache implements MixerState {
    private final Device dev;
    private final int width;
    public final Tensor[] k;
    public final Tensor[] v;
    /** Tokens of each sequence seen so far. */
    public final int[] length;

    public KvCache(Device dev, int sequences, int width) {
        this.dev = dev;
        this.width = width;
        k = new Tensor[sequences];
        v = new Tensor[sequences];
        length = new int[sequences];
    }

    /** Makes room for {@code total} tokens of sequence b, keeping what it holds. */
    public void reserve(int b, int total) {
        int cap = k[b] == null ? 0 : k[b].rows();
        if (total <= cap) {
            return;
        }
        int grown = Math.max(total, Math.max(64, 2 * cap));
        k[b] = grow(k[b], grown, length[b]);
        v[b] = grow(v[b], grown, length[b]);
    }

    private Tensor grow(Tensor old, int rows, int used) {
        Tensor t = dev.allocate(DType.F32, rows, width);
        if (old != null) {
            if (used > 0) {
                dev.backend().copy(t.view(0, used, width), old.view(0, used, width));
            }
            old.close();
        }
        return t;
    }

    @Override
    public long bytes() {
        long n = 0;
        for (Tensor t : k) {
            n += t == null ? 0 : 2L * t.numel() * Float.BYTES;
        }
        return n;
    }

    @Override
    public void close() {
        for (int b = 0; b < k.length; b++) {
            if (k[b] != null) {
                k[b].close();
                v[b].close();
            }
        }
    }
}
