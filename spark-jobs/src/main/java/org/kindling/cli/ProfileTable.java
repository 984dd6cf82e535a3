package org.kindling.cli;

import java.io.PrintWriter;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.kindling.ops.KernelClass;
import org.kindling.ops.Profiler;

/**
 * The per-class profile of training steps, as Ivanov et al.'s "data movement is all you need"
 * tables: what each kernel class costs per step in calls, FLOPs, bytes and time, its share of the
 * FLOPs and of the time, and the rates it achieves. Calls, FLOPs and bytes are summed over the
 * replicas; time is the mean over replicas, which run at once, so the rates are the whole
 * machine's.
 */
final class ProfileTable {
    /** One class per step; shares are fractions of the step's FLOPs and of its profiled time. */
    record Row(String kernelClass, double calls, double gflop, double mbytes, double ms, double flopShare, double timeShare) {
    }

    private ProfileTable() {
    }

    /** Every class's row, in {@link KernelClass} order, from {@code totals} over {@code steps} steps of {@code replicas} replicas. */
    static List<Row> rows(Map<KernelClass, Profiler.Totals> totals, int steps, int replicas) {
        Map<String, Profiler.Totals> named = new LinkedHashMap<>();
        totals.forEach((k, t) -> named.put(k.label(), t));
        return named(named, steps, replicas);
    }

    /** Rows of named totals (classes or kernels) in the map's order; shares are of the map's sums. */
    static List<Row> named(Map<String, Profiler.Totals> totals, int steps, int replicas) {
        double flops = 0;
        double nanos = 0;
        for (Profiler.Totals t : totals.values()) {
            flops += t.flops();
            nanos += t.nanos();
        }
        List<Row> rows = new ArrayList<>();
        for (Map.Entry<String, Profiler.Totals> e : totals.entrySet()) {
            Profiler.Totals t = e.getValue();
            rows.add(new Row(e.getKey(), (double) t.calls() / steps, t.flops() / steps / 1e9, t.bytes() / steps / 1e6,
                    t.nanos() / 1e6 / steps / replicas, flops > 0 ? t.flops() / flops : 0, nanos > 0 ? t.nanos() / nanos : 0));
        }
        return rows;
    }

    /** The {@code top} costliest kernels by time on {@code err}: which kernel of a class to fuse or speed up. */
    static void printKernels(PrintWriter err, List<Row> kernels, int top) {
        List<Row> sorted = new ArrayList<>(kernels);
        sorted.sort((a, b) -> Double.compare(b.ms(), a.ms()));
        err.printf("costliest kernels per step:%n");
        for (Row r : sorted.subList(0, Math.min(top, sorted.size()))) {
            line(err, r.kernelClass(), r.calls(), r.gflop(), r.mbytes(), r.ms(), r.flopShare(), r.timeShare());
        }
        err.flush();
    }

    /** The table on {@code err}, with a total row and how much of the mean step {@code stepMs} it covers. */
    static void print(PrintWriter err, List<Row> rows, int replicas, double stepMs) {
        err.printf("profile per step (calls, GFLOP, MB summed over %d replica(s); ms their mean):%n", replicas);
        err.printf("%-28s %9s %10s %10s %9s %7s %7s %9s %8s%n", "class", "calls", "GFLOP", "MB", "ms", "%FLOP", "%time",
                "GFLOP/s", "GB/s");
        double calls = 0;
        double gflop = 0;
        double mb = 0;
        double ms = 0;
        for (Row r : rows) {
            line(err, r.kernelClass(), r.calls(), r.gflop(), r.mbytes(), r.ms(), r.flopShare(), r.timeShare());
            calls += r.calls();
            gflop += r.gflop();
            mb += r.mbytes();
            ms += r.ms();
        }
        line(err, "total", calls, gflop, mb, ms, gflop > 0 ? 1 : 0, ms > 0 ? 1 : 0);
        err.printf("kernels and sync take %.2f of the mean step's %.2f ms (replica 0); the rest is host code between them%n", ms, stepMs);
        err.flush();
    }

    private static void line(PrintWriter err, String name, double calls, double gflop, double mb, double ms, double flopShare,
                             double timeShare) {
        err.printf("%-28s %9.1f %10.3f %10.1f %9.2f %6.1f%% %6.1f%% %9.1f %8.2f%n", name, calls, gflop, mb, ms,
                100 * flopShare, 100 * timeShare, ms > 0 ? gflop / (ms / 1e3) : 0, ms > 0 ? mb / ms : 0);
    }

    /** One JSON line per class: {@code bench, class, calls, gflop, mbytes, ms, flop_share, time_share}. */
    static void printJson(PrintWriter out, List<Row> rows) {
        for (Row r : rows) {
            Map<String, Object> row = new LinkedHashMap<>();
            row.put("bench", "train_profile");
            row.put("class", r.kernelClass());
            row.put("calls", round(r.calls(), 2));
            row.put("gflop", round(r.gflop(), 4));
            row.put("mbytes", round(r.mbytes(), 2));
            row.put("ms", round(r.ms(), 3));
            row.put("flop_share", round(r.flopShare(), 4));
            row.put("time_share", round(r.timeShare(), 4));
            Json.printLine(out, row);
        }
    }

    private static double round(double v, int digits) {
        double scale = Math.pow(10, digits);
        return Math.round(v * scale) / scale;
    }
}
