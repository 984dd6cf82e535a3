package org.kindling.models.pipeline;

import java.util.Arrays;
import java.util.stream.Collectors;

/** How a static pipeline schedule orders micro-batches and which activations it recomputes. */
public enum PipelinePolicy {
    /** PipeDream-flush 1F1B: warm-up forwards, then one forward and one backward alternately; every activation kept. */
    ONE_F_ONE_B("1f1b"),
    /** 1F1B where every forward keeps only its input and the backward recomputes right after its gradient arrives. */
    ONE_F_ONE_B_RECOMPUTE("1f1b-recompute"),
    /**
     * Merak's stage-aware recomputation: stage s holds min(S − s, M) micro-batches in flight under
     * 1F1B, so later stages hold fewer and have memory to spare; a stage keeps whole activation sets
     * up to a budget and checkpoints only the rest (see {@link Schedule#keptSets}).
     */
    STAGE_AWARE("stage-aware"),
    /**
     * Merak's shifted critical path: full recomputation, but each recompute runs before the stage
     * waits for that micro-batch's gradient, so it overlaps the wait instead of lengthening the
     * critical path; where a backward follows its own forward at once (the last stage) the
     * activations are still there and nothing is recomputed.
     */
    SHIFTED("shifted");

    private final String key;

    PipelinePolicy(String key) {
        this.key = key;
    }

    public String key() {
        return key;
    }

    /** The policy named {@code key}, or an error listing the names. */
    public static PipelinePolicy parse(String key) {
        for (PipelinePolicy p : values()) {
            if (p.key.equals(key)) {
                return p;
            }
        }
        throw new IllegalArgumentException("pipeline policy must be one of "
                + Arrays.stream(values()).map(PipelinePolicy::key).collect(Collectors.joining(", ")) + ", got '" + key + "'");
    }
}
