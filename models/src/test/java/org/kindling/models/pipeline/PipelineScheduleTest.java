package org.kindling.models.pipeline;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import org.junit.jupiter.api.Test;
import org.kindling.models.pipeline.Command.Op;

class PipelineScheduleTest {
    private static final Costs TRANSFORMER = new Costs(1, 2, 1, 0.25, 0, 0);

    private static int[] oneFOneBBounds(int stages, int m) {
        int[] b = new int[stages];
        for (int s = 0; s < stages; s++) {
            b[s] = Schedule.inFlight(s, stages, m);
        }
        return b;
    }

    @Test
    void everyPolicyRunsToTheEndStaticallyAndMessageDriven() {
        for (PipelinePolicy policy : PipelinePolicy.values()) {
            for (int stages = 1; stages <= 8; stages++) {
                for (int m = 1; m <= 32; m++) {
                    Schedule sch = Schedule.build(stages, m, policy);
                    SimResult r = Simulator.run(sch, TRANSFORMER);
                    double busy = 0;
                    for (double b : r.busy()) {
                        busy += b;
                    }
                    // All the work ran: every forward and backward on every stage, plus each recompute.
                    assertEquals(stages * m * 3.0 + r.recomputes(), busy, 1e-9, policy + " S=" + stages + " M=" + m);
                    SimResult md = Simulator.runMessageDriven(sch, TRANSFORMER.withJitter(0.5, m), oneFOneBBounds(stages, m));
                    assertEquals(r.recomputes(), md.recomputes(), policy + " S=" + stages + " M=" + m);
                }
            }
        }
    }

    /**
     * The textbook bubble (S−1)/(M+S−1) assumes every stage's forward and backward take the same
     * time f = b on every stage and messages arrive at once: then the step takes (M+S−1)(f+b) and
     * each stage computes M(f+b) of it.
     */
    @Test
    void oneFOneBBubbleIsTheTextbookOneUnderUnitCosts() {
        for (int stages = 2; stages <= 8; stages++) {
            for (int m = 1; m <= 32; m++) {
                SimResult r = Simulator.run(Schedule.build(stages, m, PipelinePolicy.ONE_F_ONE_B), Costs.unit());
                assertEquals((m + stages - 1) * 2.0, r.makespan(), 1e-9, "S=" + stages + " M=" + m);
                assertEquals((stages - 1.0) / (m + stages - 1), r.bubble(), 1e-12, "S=" + stages + " M=" + m);
            }
        }
    }

    @Test
    void latencyWidensTheBubble() {
        Schedule sch = Schedule.build(4, 8, PipelinePolicy.ONE_F_ONE_B);
        double plain = Simulator.run(sch, Costs.unit()).bubble();
        assertTrue(Simulator.run(sch, new Costs(1, 1, 1, 0.5, 0, 0)).bubble() > plain);
    }

    @Test
    void shiftedIsNeverSlowerThanOneFOneBWithRecomputation() {
        List<Costs> costs = List.of(Costs.unit(), TRANSFORMER, new Costs(1, 2, 1, 1.5, 0, 0),
                TRANSFORMER.withJitter(0.5, 7), new Costs(1, 2, 1, 0.1, 0.3, 11));
        for (Costs c : costs) {
            for (int stages = 2; stages <= 8; stages++) {
                for (int m = 1; m <= 32; m++) {
                    double shifted = Simulator.run(Schedule.build(stages, m, PipelinePolicy.SHIFTED), c).makespan();
                    double full = Simulator.run(Schedule.build(stages, m, PipelinePolicy.ONE_F_ONE_B_RECOMPUTE), c).makespan();
                    assertTrue(shifted <= full + 1e-9, c + " S=" + stages + " M=" + m + ": " + shifted + " > " + full);
                }
            }
        }
        // With transformer costs it is strictly faster: the last stage recomputes nothing, the others overlap the wait.
        double shifted = Simulator.run(Schedule.build(4, 8, PipelinePolicy.SHIFTED), TRANSFORMER).makespan();
        double full = Simulator.run(Schedule.build(4, 8, PipelinePolicy.ONE_F_ONE_B_RECOMPUTE), TRANSFORMER).makespan();
        assertTrue(shifted < full, shifted + " vs " + full);
    }

    @Test
    void peakActivationsPerStage() {
        int stages = 6;
        int m = 16;
        SimResult plain = Simulator.run(Schedule.build(stages, m, PipelinePolicy.ONE_F_ONE_B), TRANSFORMER);
        SimResult full = Simulator.run(Schedule.build(stages, m, PipelinePolicy.ONE_F_ONE_B_RECOMPUTE), TRANSFORMER);
        SimResult aware = Simulator.run(Schedule.build(stages, m, PipelinePolicy.STAGE_AWARE), TRANSFORMER);
        SimResult shifted = Simulator.run(Schedule.build(stages, m, PipelinePolicy.SHIFTED), TRANSFORMER);
        int budget = Schedule.defaultBudget(stages);
        for (int s = 0; s < stages; s++) {
            int w = stages - s;
            assertEquals(w, plain.peakInFlight()[s]);
            assertEquals(w, plain.peakSets()[s]);
            assertEquals(w, full.peakInFlight()[s]);
            assertEquals(1, full.peakSets()[s]);
            assertEquals(w, aware.peakInFlight()[s]);
            assertEquals(Math.min(w, budget), aware.peakSets()[s], "stage " + s);
            assertTrue(shifted.peakSets()[s] <= 2, "stage " + s);
        }
        assertEquals(1, shifted.peakSets()[stages - 1]);
        assertEquals((stages - 1) * m, shifted.recomputes());
        assertEquals(stages * m, full.recomputes());
        assertEquals(0, plain.recomputes());
        // Only the stages holding more than the budget recompute, and only what exceeds budget − 1 kept sets.
        assertTrue(aware.recomputes() > 0 && aware.recomputes() < full.recomputes(), "" + aware.recomputes());
        SimResult fewer = Simulator.run(Schedule.build(stages, 4, PipelinePolicy.ONE_F_ONE_B), TRANSFORMER);
        assertEquals(4, fewer.peakInFlight()[0]);
    }

    @Test
    void stageAwareRecomputesLessOnLaterStagesAndNothingWithinBudget() {
        int stages = 8;
        Schedule sch = Schedule.build(stages, 16, PipelinePolicy.STAGE_AWARE, 3);
        int previous = Integer.MAX_VALUE;
        for (int s = 0; s < stages; s++) {
            int rec = (int) sch.programs().get(s).stream().filter(c -> c.op() == Op.RECOMPUTE).count();
            assertTrue(rec <= previous, "stage " + s);
            if (stages - s <= 3) {
                assertEquals(0, rec, "stage " + s);
            }
            previous = rec;
        }
        assertEquals(2, Schedule.keptSets(0, stages, 16, 3));
        assertEquals(3, Schedule.keptSets(5, stages, 16, 3));
    }

    @Test
    void messageDrivenNeverDeadlocksAndBeatsTheStaticOrderUnderJitter() {
        for (int stages = 2; stages <= 8; stages++) {
            for (int m : new int[] {1, 3, 8, 16}) {
                for (long seed = 0; seed < 20; seed++) {
                    Schedule sch = Schedule.build(stages, m, PipelinePolicy.ONE_F_ONE_B);
                    SimResult r = Simulator.runMessageDriven(sch, TRANSFORMER.withJitter(0.5, seed), oneFOneBBounds(stages, m));
                    for (int s = 0; s < stages; s++) {
                        assertTrue(r.peakInFlight()[s] <= Schedule.inFlight(s, stages, m));
                    }
                }
            }
        }
        // Under 1F1B's own bounds the bound dictates nearly the same order: never slower in the mean up to jitter 0.5.
        for (double jitter : new double[] {0.2, 0.5}) {
            double[] mean = meanMakespans(TRANSFORMER, jitter, 0);
            assertTrue(mean[1] <= mean[0], "jitter " + jitter + ": message-driven " + mean[1] + " vs static " + mean[0]);
        }
        // With one more micro-batch allowed in flight (AxoNN's slack) it is faster, and more so the more jitter.
        double previous = 0;
        for (double jitter : new double[] {0.2, 0.5, 1.0}) {
            double[] mean = meanMakespans(new Costs(1, 2, 1, 0, 0, 0), jitter, 1);
            double gain = mean[0] / mean[1] - 1;
            assertTrue(gain > previous, "jitter " + jitter + ": gain " + gain + " after " + previous);
            previous = gain;
        }
    }

    /** Mean makespans of static 1F1B and message-driven execution (bounds 1F1B's + extra) over seeds 1..40, S = 4, M = 8. */
    private static double[] meanMakespans(Costs costs, double jitter, int extra) {
        Schedule sch = Schedule.build(4, 8, PipelinePolicy.ONE_F_ONE_B);
        int[] bounds = oneFOneBBounds(4, 8);
        for (int s = 0; s < bounds.length; s++) {
            bounds[s] += extra;
        }
        double fixed = 0;
        double dynamic = 0;
        for (long seed = 1; seed <= 40; seed++) {
            Costs c = costs.withJitter(jitter, seed);
            fixed += Simulator.run(sch, c).makespan();
            dynamic += Simulator.runMessageDriven(sch, c, bounds).makespan();
        }
        return new double[] {fixed / 40, dynamic / 40};
    }

    @Test
    void aScheduleThatWaitsInACircleIsReportedAsDeadlock() {
        Schedule crossed = new Schedule(2, 2, PipelinePolicy.ONE_F_ONE_B, List.of(
                List.of(new Command(Op.FORWARD, 0), new Command(Op.SEND_ACT, 0), new Command(Op.FORWARD, 1),
                        new Command(Op.RECV_GRAD, 0), new Command(Op.SEND_ACT, 1), new Command(Op.BACKWARD, 0),
                        new Command(Op.RECV_GRAD, 1), new Command(Op.BACKWARD, 1)),
                List.of(new Command(Op.RECV_ACT, 1), new Command(Op.FORWARD, 1), new Command(Op.BACKWARD, 1),
                        new Command(Op.SEND_GRAD, 1), new Command(Op.RECV_ACT, 0), new Command(Op.FORWARD, 0),
                        new Command(Op.BACKWARD, 0), new Command(Op.SEND_GRAD, 0))));
        DeadlockException e = assertThrows(DeadlockException.class, () -> Simulator.run(crossed, Costs.unit()));
        assertTrue(e.getMessage().contains("stage 0 waits at RECV_GRAD(0)") && e.getMessage().contains("stage 1 waits at RECV_ACT(1)"),
                e.getMessage());
    }

    @Test
    void badInputsAreRefusedWithTheirName() {
        assertTrue(assertThrows(IllegalArgumentException.class, () -> Schedule.build(0, 4, PipelinePolicy.ONE_F_ONE_B))
                .getMessage().contains("stages must be >= 1, got 0"));
        assertTrue(assertThrows(IllegalArgumentException.class, () -> Schedule.build(2, 0, PipelinePolicy.SHIFTED))
                .getMessage().contains("micro-batches must be >= 1, got 0"));
        assertTrue(assertThrows(IllegalArgumentException.class, () -> Schedule.build(2, 2, PipelinePolicy.STAGE_AWARE, 0))
                .getMessage().contains("budget must be >= 1"));
        assertTrue(assertThrows(IllegalArgumentException.class, () -> PipelinePolicy.parse("gpipe"))
                .getMessage().contains("1f1b, 1f1b-recompute, stage-aware, shifted, got 'gpipe'"));
        assertEquals(PipelinePolicy.STAGE_AWARE, PipelinePolicy.parse("stage-aware"));
        assertTrue(assertThrows(IllegalArgumentException.class, () -> new Costs(1, 0, 1, 0, 0, 0))
                .getMessage().contains("backward cost must be > 0"));
        assertTrue(assertThrows(IllegalArgumentException.class, () -> new Costs(1, 1, 1, -1, 0, 0))
                .getMessage().contains("send latency cost must be >= 0"));
        // A backward without its activations: the forward checkpointed and nothing recomputed.
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> new Schedule(1, 1, PipelinePolicy.ONE_F_ONE_B,
                List.of(List.of(new Command(Op.FORWARD_CHECKPOINT, 0), new Command(Op.BACKWARD, 0)))));
        assertTrue(e.getMessage().contains("stage 0: BACKWARD(0) breaks the rule: the backward needs the activations"), e.getMessage());
        assertTrue(assertThrows(IllegalArgumentException.class, () -> new Schedule(1, 2, PipelinePolicy.ONE_F_ONE_B,
                List.of(List.of(new Command(Op.FORWARD, 0), new Command(Op.BACKWARD, 0)))))
                .getMessage().contains("micro-batch 1 is never backwarded"));
        assertTrue(assertThrows(IllegalArgumentException.class, () -> Simulator.runMessageDriven(
                Schedule.build(2, 2, PipelinePolicy.ONE_F_ONE_B), Costs.unit(), new int[] {2, 0}))
                .getMessage().contains("stage 1's in-flight bound must be >= 1"));
    }
}
