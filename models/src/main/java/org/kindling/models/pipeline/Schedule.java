package org.kindling.models.pipeline;

import java.util.ArrayList;
import java.util.List;
import org.kindling.models.pipeline.Command.Op;

/**
 * A static pipeline schedule: the program of every stage for one optimizer step of {@code
 * microBatches} micro-batches, a pure function of (stages, micro-batches, policy). Every program is
 * 1F1B's order (PipeDream-flush): stage s runs min(S − s − 1, M) warm-up forwards, then alternates
 * forward and backward, then drains the backwards, so it never holds more than w_s = min(S − s, M)
 * micro-batches in flight. Policies differ in which forwards checkpoint
 * and where recomputes go.
 *
 * @param stages S, the pipeline's depth
 * @param microBatches M, micro-batches per step
 * @param policy the policy that built it
 * @param programs each stage's commands, stage 0 (the embeddings' side) first
 */
public record Schedule(int stages, int microBatches, PipelinePolicy policy, List<List<Command>> programs) {
    public Schedule {
        checkShape(stages, microBatches);
        programs = programs.stream().map(List::copyOf).toList();
        if (programs.size() != stages) {
            throw new IllegalArgumentException("a schedule of " + stages + " stages needs as many programs, got " + programs.size());
        }
        for (int s = 0; s < stages; s++) {
            validate(s, stages, microBatches, programs.get(s));
        }
    }

    private static void checkShape(int stages, int microBatches) {
        if (stages < 1) {
            throw new IllegalArgumentException("pipeline stages must be >= 1, got " + stages);
        }
        if (microBatches < 1) {
            throw new IllegalArgumentException("micro-batches must be >= 1, got " + microBatches);
        }
    }

    /** The schedule of {@code policy}; stage-aware keeps {@link #defaultBudget} activation sets per stage. */
    public static Schedule build(int stages, int microBatches, PipelinePolicy policy) {
        checkShape(stages, microBatches);
        return build(stages, microBatches, policy, defaultBudget(stages));
    }

    /**
     * Stage-aware's memory budget unless given: ⌈S/2⌉ activation sets per stage, so the later half
     * of the stages, which hold at most that many micro-batches in flight, never recompute.
     */
    public static int defaultBudget(int stages) {
        return (stages + 1) / 2;
    }

    /**
     * The schedule of {@code policy}.
     *
     * @param budget stage-aware only: the whole activation sets a stage may hold at once (each
     *     micro-batch's saved activations, or the working set of a forward or recompute), >= 1;
     *     checkpointed inputs are counted as free beside them
     */
    public static Schedule build(int stages, int microBatches, PipelinePolicy policy, int budget) {
        checkShape(stages, microBatches);
        if (policy == null) {
            throw new IllegalArgumentException("a schedule needs a policy");
        }
        if (budget < 1) {
            throw new IllegalArgumentException("stage-aware memory budget must be >= 1 activation set, got " + budget);
        }
        List<List<Command>> programs = new ArrayList<>();
        for (int s = 0; s < stages; s++) {
            programs.add(program(s, stages, microBatches, policy, budget));
        }
        return new Schedule(stages, microBatches, policy, programs);
    }

    /** Each stage's 1F1B in-flight bound ({@link #inFlight}): message-driven execution's default. */
    public int[] inFlightBounds() {
        int[] out = new int[stages];
        for (int s = 0; s < stages; s++) {
            out[s] = inFlight(s, stages, microBatches);
        }
        return out;
    }

    /** Whether stage s's forward of micro-batch mb keeps only its input: [stage][micro-batch]. */
    public boolean[][] checkpoints() {
        boolean[][] out = new boolean[stages][microBatches];
        for (int s = 0; s < stages; s++) {
            for (Command c : programs.get(s)) {
                if (c.op() == Op.FORWARD_CHECKPOINT) {
                    out[s][c.microBatch()] = true;
                }
            }
        }
        return out;
    }

    /** Micro-batches stage s holds in flight at most under 1F1B: min(S − s, M). */
    public static int inFlight(int stage, int stages, int microBatches) {
        return Math.min(stages - stage, microBatches);
    }

    /**
     * Stage-aware's rule: how many micro-batches stage s keeps whole activation sets for at once. All
     * of its w_s in flight when they fit the budget (w_s ≤ budget); else budget − 1, since one set is
     * the working set of the recomputes the others then need.
     */
    public static int keptSets(int stage, int stages, int microBatches, int budget) {
        int w = inFlight(stage, stages, microBatches);
        return w <= budget ? w : budget - 1;
    }

    /** The order of compute ops of 1F1B on one stage: +mb for a forward, −(mb+1) for a backward. */
    private static int[] order(int stage, int stages, int m) {
        int warmup = Math.min(stages - stage - 1, m);
        int[] seq = new int[2 * m];
        int k = 0;
        for (int i = 0; i < warmup; i++) {
            seq[k++] = i;
        }
        for (int i = 0; i < m - warmup; i++) {
            seq[k++] = warmup + i;
            seq[k++] = -(i + 1);
        }
        for (int i = m - warmup; i < m; i++) {
            seq[k++] = -(i + 1);
        }
        return seq;
    }

    private static List<Command> program(int s, int stages, int m, PipelinePolicy policy, int budget) {
        boolean first = s == 0;
        boolean last = s == stages - 1;
        int[] seq = order(s, stages, m);
        boolean[] checkpointed = new boolean[m];
        int kept = 0;
        int keepLimit = keptSets(s, stages, m, budget);
        for (int k = 0; k < seq.length; k++) {
            if (seq[k] >= 0) {
                int mb = seq[k];
                checkpointed[mb] = switch (policy) {
                    case ONE_F_ONE_B -> false;
                    case ONE_F_ONE_B_RECOMPUTE -> true;
                    case STAGE_AWARE -> kept >= keepLimit;
                    // The backward right after its own forward finds the activations still there.
                    case SHIFTED -> !(k + 1 < seq.length && seq[k + 1] == -(mb + 1));
                };
                kept += checkpointed[mb] ? 0 : 1;
            } else if (!checkpointed[-seq[k] - 1]) {
                kept--;
            }
        }
        List<Command> out = new ArrayList<>();
        for (int v : seq) {
            if (v >= 0) {
                if (!first) {
                    out.add(new Command(Op.RECV_ACT, v));
                }
                out.add(new Command(checkpointed[v] ? Op.FORWARD_CHECKPOINT : Op.FORWARD, v));
                if (!last) {
                    out.add(new Command(Op.SEND_ACT, v));
                }
                continue;
            }
            int mb = -v - 1;
            boolean shift = policy == PipelinePolicy.SHIFTED;
            if (checkpointed[mb] && shift) {
                out.add(new Command(Op.RECOMPUTE, mb));
            }
            if (!last) {
                out.add(new Command(Op.RECV_GRAD, mb));
            }
            if (checkpointed[mb] && !shift) {
                out.add(new Command(Op.RECOMPUTE, mb));
            }
            out.add(new Command(Op.BACKWARD, mb));
            if (!first) {
                out.add(new Command(Op.SEND_GRAD, mb));
            }
        }
        return out;
    }

    /**
     * Checks one stage's program: each micro-batch forwarded once, then backwarded once, with its
     * activations present (kept by the forward or recomputed since), messages only towards stages that
     * exist, each receive before the compute that needs it and each send after the one that produces it.
     */
    private static void validate(int s, int stages, int m, List<Command> program) {
        int[] forwarded = new int[m];
        boolean[] live = new boolean[m];
        boolean[] checkpoint = new boolean[m];
        boolean[] backwarded = new boolean[m];
        boolean[] gotAct = new boolean[m];
        boolean[] gotGrad = new boolean[m];
        for (Command c : program) {
            int mb = c.microBatch();
            String where = "stage " + s + ": " + c;
            if (mb >= m) {
                throw new IllegalArgumentException(where + " names a micro-batch beyond the " + m + " of the step");
            }
            switch (c.op()) {
                case RECV_ACT -> {
                    require(s > 0 && !gotAct[mb], where, "the first stage receives no activations, others each once");
                    gotAct[mb] = true;
                }
                case FORWARD, FORWARD_CHECKPOINT -> {
                    require(forwarded[mb]++ == 0, where, "a micro-batch is forwarded once");
                    require(s == 0 || gotAct[mb], where, "the forward needs its input received first");
                    live[mb] = c.op() == Op.FORWARD;
                    checkpoint[mb] = c.op() == Op.FORWARD_CHECKPOINT;
                }
                case SEND_ACT -> require(s < stages - 1 && forwarded[mb] == 1 && !backwarded[mb], where,
                        "only a stage with a successor sends, after the forward");
                case RECOMPUTE -> {
                    require(checkpoint[mb] && !live[mb] && !backwarded[mb], where, "recompute follows a checkpointed forward, once");
                    live[mb] = true;
                }
                case RECV_GRAD -> {
                    require(s < stages - 1 && forwarded[mb] == 1 && !gotGrad[mb], where,
                            "only a stage with a successor receives gradients, once, after the forward");
                    gotGrad[mb] = true;
                }
                case BACKWARD -> {
                    require(live[mb] && !backwarded[mb], where, "the backward needs the activations, kept or recomputed");
                    require(s == stages - 1 || gotGrad[mb], where, "the backward needs its gradient received first");
                    backwarded[mb] = true;
                    live[mb] = false;
                }
                case SEND_GRAD -> require(s > 0 && backwarded[mb], where, "only a stage with a predecessor sends, after the backward");
            }
        }
        for (int mb = 0; mb < m; mb++) {
            require(backwarded[mb], "stage " + s, "micro-batch " + mb + " is never backwarded");
        }
    }

    private static void require(boolean ok, String where, String rule) {
        if (!ok) {
            throw new IllegalArgumentException(where + " breaks the rule: " + rule);
        }
    }
}
