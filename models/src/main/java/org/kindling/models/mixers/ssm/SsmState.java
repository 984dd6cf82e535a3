package org.kindling.models.mixers.ssm;

import org.kindling.models.mixers.MixerState;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;

/**
 * What S4D and H3 remember of each decoded sequence, constant in its length: the diagonal SSM's
 * complex state [W, N/2, 2] and, for H3's shift SSM, the last L − 1 inputs of its causal
 * convolution [L − 1, C] (zeros before a sequence starts, which is what the convolution assumes).
 */
final class SsmState implements MixerState {
    private final Tensor ssm;
    private final int[] ssmShape;
    private final Tensor history;
    private final int historyRows;
    private final int historyCols;
    /** I32 [2] offsets {0, L − 1 + n} of one sequence's convolution window. */
    final Tensor cu;

    SsmState(Device dev, int sequences, int[] ssmShape, int historyRows, int historyCols) {
        this.ssmShape = ssmShape.clone();
        this.ssm = dev.allocate(DType.F32, sequences * Tensor.numel(ssmShape));
        dev.backend().fill(ssm, 0f);
        this.historyRows = historyRows;
        this.historyCols = historyCols;
        if (historyRows > 0) {
            history = dev.allocate(DType.F32, sequences * historyRows * historyCols);
            dev.backend().fill(history, 0f);
            cu = dev.allocate(DType.I32, 2);
        } else {
            history = null;
            cu = null;
        }
    }

    /** Sequence b's SSM state. */
    Tensor ssm(int b) {
        return ssm.view(b * Tensor.numel(ssmShape), ssmShape);
    }

    /** Sequence b's convolution history [L − 1, C], oldest row first. */
    Tensor history(int b) {
        return history.view(b * historyRows * historyCols, historyRows, historyCols);
    }

    @Override
    public long bytes() {
        return ((long) ssm.numel() + (history == null ? 0 : history.numel())) * Float.BYTES;
    }

    @Override
    public void close() {
        ssm.close();
        if (history != null) {
            history.close();
            cu.close();
        }
    }
}
