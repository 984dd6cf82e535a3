package org.kindling.models.pipeline;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.PriorityQueue;
import org.kindling.models.pipeline.Command.Op;

/**
 * A discrete-event simulator of one pipeline step: stages run their computations one at a time,
 * messages between neighbours arrive a send latency after they are sent, and a stage's backward on
 * the last stage needs no message (the loss is local). It measures makespan, bubble, in-flight
 * micro-batches and activation sets per stage, and fails with a {@link DeadlockException} when no
 * stage can progress.
 */
public final class Simulator {
    private Simulator() {
    }

    /** Each stage's activation memory, in whole sets and micro-batches in flight. */
    private static final class Memory {
        int sets;
        int inFlight;
        int peakSets;
        int peakInFlight;

        /** Accounts for computation {@code op}: its working set while it runs, what it leaves held after. */
        void run(Op op) {
            int during = op == Op.BACKWARD ? sets : sets + 1;
            peakSets = Math.max(peakSets, during);
            switch (op) {
                case FORWARD -> {
                    sets++;
                    inFlight++;
                }
                case FORWARD_CHECKPOINT -> inFlight++;
                case RECOMPUTE -> sets++;
                case BACKWARD -> {
                    sets--;
                    inFlight--;
                }
                default -> throw new IllegalArgumentException(op + " is a message, not a computation");
            }
            peakInFlight = Math.max(peakInFlight, inFlight);
        }
    }

    /** Runs every stage's program in its static order. */
    public static SimResult run(Schedule schedule, Costs costs) {
        int n = schedule.stages();
        int m = schedule.microBatches();
        // Arrival time of each message at its receiver, NaN until sent: act[s][mb] into stage s, grad[s][mb] into stage s.
        double[][] act = nans(n, m);
        double[][] grad = nans(n, m);
        double[] clock = new double[n];
        double[] busy = new double[n];
        int[] pc = new int[n];
        Memory[] mem = memories(n);
        int recomputes = 0;
        boolean progressed = true;
        while (progressed) {
            progressed = false;
            for (int s = 0; s < n; s++) {
                List<Command> program = schedule.programs().get(s);
                while (pc[s] < program.size()) {
                    Command c = program.get(pc[s]);
                    int mb = c.microBatch();
                    if (c.op() == Op.RECV_ACT || c.op() == Op.RECV_GRAD) {
                        double at = (c.op() == Op.RECV_ACT ? act : grad)[s][mb];
                        if (Double.isNaN(at)) {
                            break;
                        }
                        clock[s] = Math.max(clock[s], at);
                    } else if (c.op() == Op.SEND_ACT) {
                        act[s + 1][mb] = clock[s] + costs.sendLatency();
                    } else if (c.op() == Op.SEND_GRAD) {
                        grad[s - 1][mb] = clock[s] + costs.sendLatency();
                    } else {
                        double d = costs.of(c.op(), s, mb);
                        clock[s] += d;
                        busy[s] += d;
                        mem[s].run(c.op());
                        recomputes += c.op() == Op.RECOMPUTE ? 1 : 0;
                    }
                    pc[s]++;
                    progressed = true;
                }
            }
        }
        StringBuilder stuck = new StringBuilder();
        for (int s = 0; s < n; s++) {
            List<Command> program = schedule.programs().get(s);
            if (pc[s] < program.size()) {
                stuck.append(stuck.isEmpty() ? "" : "; ").append("stage ").append(s).append(" waits at ")
                        .append(program.get(pc[s])).append(" (command ").append(pc[s]).append(" of ").append(program.size()).append(')');
            }
        }
        if (!stuck.isEmpty()) {
            throw new DeadlockException(schedule.policy().key() + " schedule of " + n + " stages and " + m
                    + " micro-batches deadlocks: no stage can progress: " + stuck);
        }
        return result(Arrays.stream(clock).max().orElse(0), busy, mem, recomputes);
    }

    /**
     * AxoNN's message-driven execution of the schedule's work: each stage, when free, runs whichever
     * of its arrived forward inputs and backward gradients arrived first (a gradient first on a tie,
     * to free memory), starting a forward only while it holds fewer than {@code maxInFlight[s]}
     * micro-batches; stage 0's inputs are all there at time 0, taken in micro-batch order. A forward
     * checkpoints where the schedule's does, and its backward then recomputes first.
     *
     * @param maxInFlight each stage's bound, >= 1 (1F1B's is {@link Schedule#inFlight})
     */
    public static SimResult runMessageDriven(Schedule schedule, Costs costs, int[] maxInFlight) {
        int n = schedule.stages();
        int m = schedule.microBatches();
        if (maxInFlight.length != n) {
            throw new IllegalArgumentException("need an in-flight bound per stage: " + n + ", got " + maxInFlight.length);
        }
        for (int s = 0; s < n; s++) {
            if (maxInFlight[s] < 1) {
                throw new IllegalArgumentException("stage " + s + "'s in-flight bound must be >= 1, got " + maxInFlight[s]);
            }
        }
        boolean[][] checkpointed = schedule.checkpoints();
        List<List<Work>> ready = new ArrayList<>();
        for (int s = 0; s < n; s++) {
            ready.add(new ArrayList<>());
        }
        PriorityQueue<Event> events = new PriorityQueue<>();
        long[] seq = {0};
        for (int mb = 0; mb < m; mb++) {
            events.add(new Event(0, seq[0]++, 0, new Work(false, mb, 0), false));
        }
        boolean[] free = new boolean[n];
        Arrays.fill(free, true);
        double[] busy = new double[n];
        double end = 0;
        int[] done = new int[n];
        Memory[] mem = memories(n);
        int recomputes = 0;
        while (!events.isEmpty()) {
            Event e = events.poll();
            int s = e.stage();
            Work w = e.work();
            if (!e.finish()) {
                ready.get(s).add(w);
            } else {
                free[s] = true;
                end = Math.max(end, e.time());
                if (!w.backward()) {
                    if (s < n - 1) {
                        events.add(new Event(e.time() + costs.sendLatency(), seq[0]++, s + 1, new Work(false, w.mb(), e.time() + costs.sendLatency()), false));
                    } else {
                        events.add(new Event(e.time(), seq[0]++, s, new Work(true, w.mb(), e.time()), false));
                    }
                } else {
                    done[s]++;
                    if (s > 0) {
                        events.add(new Event(e.time() + costs.sendLatency(), seq[0]++, s - 1, new Work(true, w.mb(), e.time() + costs.sendLatency()), false));
                    }
                }
            }
            // Start work only once every event of this instant is in, so simultaneous arrivals compete fairly.
            if (!events.isEmpty() && events.peek().time() == e.time()) {
                continue;
            }
            for (int t = 0; t < n; t++) {
                if (!free[t]) {
                    continue;
                }
                Work next = pick(ready.get(t), mem[t].inFlight < maxInFlight[t]);
                if (next == null) {
                    continue;
                }
                ready.get(t).remove(next);
                double d;
                if (next.backward()) {
                    d = 0;
                    if (checkpointed[t][next.mb()]) {
                        d += costs.of(Op.RECOMPUTE, t, next.mb());
                        mem[t].run(Op.RECOMPUTE);
                        recomputes++;
                    }
                    d += costs.of(Op.BACKWARD, t, next.mb());
                    mem[t].run(Op.BACKWARD);
                } else {
                    Op op = checkpointed[t][next.mb()] ? Op.FORWARD_CHECKPOINT : Op.FORWARD;
                    d = costs.of(op, t, next.mb());
                    mem[t].run(op);
                }
                busy[t] += d;
                free[t] = false;
                events.add(new Event(e.time() + d, seq[0]++, t, next, true));
            }
        }
        StringBuilder stuck = new StringBuilder();
        for (int s = 0; s < n; s++) {
            if (done[s] < m) {
                stuck.append(stuck.isEmpty() ? "" : "; ").append("stage ").append(s).append(" finished ").append(done[s])
                        .append(" of ").append(m).append(" backwards with ").append(mem[s].inFlight).append(" in flight and ")
                        .append(ready.get(s).size()).append(" message(s) waiting");
            }
        }
        if (!stuck.isEmpty()) {
            throw new DeadlockException("message-driven execution of " + n + " stages and " + m
                    + " micro-batches deadlocks: no stage can progress: " + stuck);
        }
        return result(end, busy, mem, recomputes);
    }

    /** A forward (input arrived) or backward (gradient arrived) a stage can run. */
    private record Work(boolean backward, int mb, double arrived) {
    }

    /** A message arriving at {@code stage}, or the end of the stage's computation on {@code work}. */
    private record Event(double time, long seq, int stage, Work work, boolean finish) implements Comparable<Event> {
        @Override
        public int compareTo(Event o) {
            int c = Double.compare(time, o.time);
            return c != 0 ? c : Long.compare(seq, o.seq);
        }
    }

    /** The earliest arrived work (a backward first on a tie, then the lower micro-batch); forwards only when {@code forwards}. */
    private static Work pick(List<Work> ready, boolean forwards) {
        Work best = null;
        for (Work w : ready) {
            if (!w.backward() && !forwards) {
                continue;
            }
            if (best == null || w.arrived() < best.arrived()
                    || (w.arrived() == best.arrived() && (w.backward() && !best.backward()
                    || w.backward() == best.backward() && w.mb() < best.mb()))) {
                best = w;
            }
        }
        return best;
    }

    private static double[][] nans(int n, int m) {
        double[][] a = new double[n][m];
        for (double[] row : a) {
            Arrays.fill(row, Double.NaN);
        }
        return a;
    }

    private static Memory[] memories(int n) {
        Memory[] mem = new Memory[n];
        for (int s = 0; s < n; s++) {
            mem[s] = new Memory();
        }
        return mem;
    }

    private static SimResult result(double makespan, double[] busy, Memory[] mem, int recomputes) {
        return new SimResult(makespan, busy, Arrays.stream(mem).mapToInt(x -> x.peakInFlight).toArray(),
                Arrays.stream(mem).mapToInt(x -> x.peakSets).toArray(), recomputes);
    }
}
