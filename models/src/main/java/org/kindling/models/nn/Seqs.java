package org.kindling.models.nn;

import org.kindling.ops.Tensor;
import org.kindling.ops.Varlen;

/**
 * The packed-sequence layout of one batch on the device: what token mixers need besides x.
 *
 * @param cuSeqlens I32 [B+1] offsets of each sequence's rows
 * @param positions I32 [T] position of each token inside its sequence
 * @param host the offsets on the host
 */
public record Seqs(Tensor cuSeqlens, Tensor positions, int[] host) {
    public int tokens() {
        return host[host.length - 1];
    }

    public int sequences() {
        return host.length - 1;
    }

    /** The offsets as the packed-sequence kernels take them: on the device and on the host, so none reads them back. */
    public Varlen varlen() {
        return Varlen.of(cuSeqlens, host);
    }
}
