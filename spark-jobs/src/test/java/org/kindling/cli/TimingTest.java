package org.kindling.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;

class TimingTest {
    @Test
    void bestIsTheFastestAndMedianTheMiddleRun() {
        Timing.Stats odd = Timing.Stats.of(0.3, 0.1, 0.9, 0.2, 0.5);
        assertEquals(0.1, odd.best());
        assertEquals(0.3, odd.median());
        assertEquals(5, odd.reps());
        Timing.Stats even = Timing.Stats.of(4, 1, 3, 2);
        assertEquals(1, even.best());
        assertEquals(2.5, even.median());
        Timing.Stats one = Timing.Stats.of(0.7);
        assertEquals(0.7, one.best());
        assertEquals(0.7, one.median());
        assertEquals(20, Timing.Stats.of(0.5, 0.25).bestRate(5));
        assertEquals(40.0 / 3, Timing.Stats.of(0.5, 0.25).medianRate(5), 1e-12);
    }

    @Test
    void statisticsRejectMissingOrNonsenseRuns() {
        assertThrows(IllegalArgumentException.class, Timing.Stats::of);
        assertThrows(IllegalArgumentException.class, () -> Timing.Stats.of(0.1, -0.2));
        assertThrows(IllegalArgumentException.class, () -> Timing.Stats.of(0.1, Double.NaN));
        assertThrows(IllegalArgumentException.class, () -> new Timing.Rule(-1, 1, 0));
        assertThrows(IllegalArgumentException.class, () -> new Timing.Rule(0, 0, 0));
        assertThrows(IllegalArgumentException.class, () -> new Timing.Rule(0, 1, Double.NaN));
    }

    /** A clock that advances by the next given step each time the run body executes. */
    private static final class FakeClock {
        long now;
        final List<String> calls = new ArrayList<>();
    }

    @Test
    void warmsUpThenTimesOnlyTheRunUntilRepsAndSecondsAreBothMet() throws Exception {
        FakeClock clock = new FakeClock();
        long[] stepNanos = {40_000_000L, 10_000_000L, 30_000_000L, 20_000_000L, 50_000_000L};
        int[] timedRuns = {0};
        Timing.Trial warm = () -> clock.calls.add("warm");
        Timing.Trial timed = new Timing.Trial() {
            @Override
            public void before() {
                clock.calls.add("before");
                clock.now += 1_000_000_000L; // untimed work must not count
            }

            @Override
            public void run() {
                clock.calls.add("run");
                clock.now += stepNanos[timedRuns[0]++];
            }

            @Override
            public void after() {
                clock.calls.add("after");
                clock.now += 1_000_000_000L;
            }
        };
        // 2 reps would do, but 0.09 s of timed work takes the first four runs (40 + 10 + 30 + 20 ms).
        Timing.Stats s = Timing.measure(new Timing.Rule(2, 2, 0.09), warm, timed, () -> clock.now);
        assertEquals(4, s.reps());
        assertEquals(0.010, s.best(), 1e-12);
        assertEquals(0.025, s.median(), 1e-12);
        assertEquals(List.of("warm", "warm", "before", "run", "after", "before", "run", "after", "before", "run", "after",
                "before", "run", "after"), clock.calls);
    }

    @Test
    void minRepsAloneWhenSecondsIsZero() throws Exception {
        int[] runs = {0};
        Timing.Stats s = Timing.measure(new Timing.Rule(1, 3, 0), () -> runs[0]++);
        assertEquals(3, s.reps());
        assertEquals(4, runs[0], "one warm-up plus three timed runs");
    }
}
