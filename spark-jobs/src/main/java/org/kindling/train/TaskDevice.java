package org.kindling.train;

import java.io.Serializable;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import org.kindling.ops.Device;

/**
 * The device {@code kindling train} trains on: {@code --device} and {@code --cpu-fallback}, checked
 * on the driver and resolved in each barrier task against the resources Spark gave that task, so
 * that a task on a GPU executor trains on the GPU Spark assigned it and not on one a peer holds.
 *
 * @param spec a device spec: {@code cpu} (the task's share of the cores), {@code cpu:N}, or a GPU
 *     provider's name ({@code cuda}) without an ordinal
 * @param cpuFallback whether a GPU task that Spark gave no GPU trains on the CPU (with a warning)
 *     instead of failing
 * @param local whether the run is one task in local Spark (the quickstart), which schedules no
 *     GPUs: the task opens the spec as given ({@code cuda}, {@code cuda:1}) instead of asking Spark
 */
public record TaskDevice(String spec, boolean cpuFallback, boolean local) implements Serializable {
    /** Training on the CPU, each task on its share of the cores. */
    public static final TaskDevice CPU = new TaskDevice("cpu", false);
    /** The device provider whose devices are GPUs that Spark schedules as the task resource {@link #GPU_RESOURCE}. */
    static final String GPU_PROVIDER = "cuda";
    /** Spark's resource name for GPUs ({@code spark.task.resource.gpu.amount}). */
    static final String GPU_RESOURCE = "gpu";

    public TaskDevice {
        Objects.requireNonNull(spec, "spec");
    }

    /** A device for the tasks of a cluster run, each GPU task taking the GPU Spark assigned it. */
    public TaskDevice(String spec, boolean cpuFallback) {
        this(spec, cpuFallback, false);
    }

    /** The device of a single-task local run, opened as given. */
    public static TaskDevice local(String spec) {
        return new TaskDevice(spec, false, true);
    }

    /** A task's choice: the spec it opens, and a warning to log when it fell back to the CPU (else null). */
    public record Choice(String spec, String warning) {
    }

    /**
     * Checks on the driver, before any task starts, that the spec names a device provider in this
     * build with a valid argument. Whether the hardware is there is each executor's business.
     *
     * @throws IllegalArgumentException naming the option and the reason
     */
    public void check() {
        try {
            Device.check(spec);
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("--device: " + e.getMessage(), e);
        }
        if (gpu() && !local && Device.argument(spec) != null) {
            throw new IllegalArgumentException("--device " + spec + ": kindling train takes each task's GPU from Spark's task "
                    + "resources; give --device " + GPU_PROVIDER);
        }
        if (cpuFallback && !gpu()) {
            throw new IllegalArgumentException("--cpu-fallback is for a GPU device (--device " + GPU_PROVIDER + "), not --device "
                    + spec);
        }
    }

    /**
     * The device a task opens. {@code cpu} runs on the task's {@code threads}; a GPU spec gets the
     * first address of the task's "gpu" resource ({@code cuda} → {@code cuda:<address>}); a GPU
     * task without one falls back to the CPU when told to, and otherwise fails saying how to ask
     * Spark for GPUs.
     *
     * @param resources the task's resources, name → addresses (Spark's {@code TaskContext.resources()})
     * @param threads the task's share of the cores
     * @throws IllegalStateException when a GPU task has no GPU and no fallback
     */
    public Choice resolve(Map<String, List<String>> resources, int threads) {
        String cpu = "cpu:" + threads;
        if (!gpu() || local) {
            return new Choice(spec.equals("cpu") ? cpu : spec, null);
        }
        List<String> gpus = resources.getOrDefault(GPU_RESOURCE, List.of());
        if (!gpus.isEmpty()) {
            return new Choice(GPU_PROVIDER + ":" + gpus.get(0), null);
        }
        String missing = "this task has no \"" + GPU_RESOURCE + "\" resource for --device " + spec;
        if (cpuFallback) {
            return new Choice(cpu, missing + "; training on the CPU (" + cpu + ") as --cpu-fallback allows");
        }
        throw new IllegalStateException(missing + ". Request one GPU per task with --conf spark.task.resource.gpu.amount=1 "
                + "(or a resource profile), and give executors GPUs with spark.executor.resource.gpu.amount=N and "
                + "spark.executor.resource.gpu.discoveryScript=SCRIPT; or pass --cpu-fallback to train on the CPU instead");
    }

    private boolean gpu() {
        return Device.name(spec).equals(GPU_PROVIDER);
    }
}
