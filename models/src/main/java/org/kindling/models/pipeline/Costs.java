package org.kindling.models.pipeline;

import java.util.SplittableRandom;

/**
 * The simulated duration of each op of a stage, in any time unit: forward, backward (≈ 2·forward
 * for a transformer), recompute (= forward) and the latency of one message between neighbouring
 * stages (sends never block; links are not contended). With {@code jitter} > 0 every computation
 * takes its cost times 1 + jitter·u, u uniform in [0, 1), drawn from {@code seed} and the op's
 * stage, kind and micro-batch alone, so two schedules of the same step see the same slowdowns for
 * the same work whatever order they run it in.
 */
public record Costs(double forward, double backward, double recompute, double sendLatency, double jitter, long seed) {
    public Costs {
        check("forward", forward, true);
        check("backward", backward, true);
        check("recompute", recompute, false);
        check("send latency", sendLatency, false);
        check("jitter", jitter, false);
    }

    /** Unit forward and backward, recompute = forward, no latency, no jitter: the textbook bubble's setting. */
    public static Costs unit() {
        return new Costs(1, 1, 1, 0, 0, 0);
    }

    /** The same costs with {@code jitter} drawn from {@code seed}. */
    public Costs withJitter(double jitter, long seed) {
        return new Costs(forward, backward, recompute, sendLatency, jitter, seed);
    }

    private static void check(String what, double v, boolean positive) {
        if (!Double.isFinite(v) || v < 0 || (positive && v == 0)) {
            throw new IllegalArgumentException(what + " cost must be " + (positive ? "> 0" : ">= 0") + " and finite, got " + v);
        }
    }

    /** The duration of computation {@code op} (FORWARD_CHECKPOINT costs as FORWARD) of micro-batch {@code mb} on {@code stage}. */
    double of(Command.Op op, int stage, int mb) {
        double base = switch (op) {
            case FORWARD, FORWARD_CHECKPOINT -> forward;
            case BACKWARD -> backward;
            case RECOMPUTE -> recompute;
            default -> throw new IllegalArgumentException(op + " is a message, not a computation");
        };
        if (jitter == 0) {
            return base;
        }
        int kind = op == Command.Op.FORWARD_CHECKPOINT ? Command.Op.FORWARD.ordinal() : op.ordinal();
        long key = seed * 0x9E3779B97F4A7C15L + ((long) stage << 40) + ((long) kind << 32) + mb;
        return base * (1 + jitter * new SplittableRandom(key).nextDouble());
    }
}
