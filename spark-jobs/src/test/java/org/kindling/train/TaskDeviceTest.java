package org.kindling.train;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

class TaskDeviceTest {
    private static final Map<String, List<String>> NONE = Map.of();

    @Test
    void cpuGetsTheTaskShareUnlessTheSpecNamesThreads() {
        assertEquals(new TaskDevice.Choice("cpu:3", null), TaskDevice.CPU.resolve(NONE, 3));
        assertEquals(new TaskDevice.Choice("cpu:5", null), new TaskDevice("cpu:5", false).resolve(Map.of("gpu", List.of("0")), 3));
        assertEquals(new TaskDevice.Choice("reference", null), new TaskDevice("reference", false).resolve(NONE, 2));
    }

    @Test
    void aGpuTaskOpensTheGpuSparkAssignedIt() {
        TaskDevice cuda = new TaskDevice("cuda", false);
        assertEquals(new TaskDevice.Choice("cuda:3", null), cuda.resolve(Map.of("gpu", List.of("3")), 4));
        assertEquals("cuda:1", cuda.resolve(Map.of("gpu", List.of("1", "2"), "fpga", List.of("0")), 4).spec());
    }

    @Test
    void aGpuTaskWithoutAGpuFailsSayingHowToRequestOne() {
        TaskDevice cuda = new TaskDevice("cuda", false);
        for (Map<String, List<String>> resources : List.of(NONE, Map.of("gpu", List.<String>of()), Map.of("fpga", List.of("0")))) {
            IllegalStateException e = assertThrows(IllegalStateException.class, () -> cuda.resolve(resources, 2));
            assertTrue(e.getMessage().startsWith("this task has no \"gpu\" resource for --device cuda"), e.getMessage());
            for (String hint : List.of("spark.task.resource.gpu.amount=1", "spark.executor.resource.gpu.amount",
                    "spark.executor.resource.gpu.discoveryScript", "--cpu-fallback")) {
                assertTrue(e.getMessage().contains(hint), hint + " in " + e.getMessage());
            }
        }
    }

    @Test
    void withFallbackAGpuTaskWithoutAGpuTrainsOnTheCpuAndSaysSo() {
        TaskDevice.Choice c = new TaskDevice("cuda", true).resolve(NONE, 2);
        assertEquals("cpu:2", c.spec());
        assertTrue(c.warning().contains("no \"gpu\" resource") && c.warning().contains("cpu:2"), c.warning());
        assertNull(new TaskDevice("cuda", true).resolve(Map.of("gpu", List.of("0")), 2).warning());
    }

    /** The quickstart's one local task: local Spark schedules no GPUs, so the spec is opened as given. */
    @Test
    void aLocalRunOpensItsSpecAsGiven() {
        assertEquals(new TaskDevice.Choice("cuda", null), TaskDevice.local("cuda").resolve(NONE, 2));
        assertEquals(new TaskDevice.Choice("cuda:1", null), TaskDevice.local("cuda:1").resolve(NONE, 2));
        assertEquals(new TaskDevice.Choice("cpu:2", null), TaskDevice.local("cpu").resolve(NONE, 2));
        TaskDevice.local("cuda:1").check();
    }

    @Test
    void theDriverRejectsBadSpecsBeforeAnyTaskStarts() {
        TaskDevice.CPU.check();
        new TaskDevice("cpu:4", false).check();
        // cuda-ops is in this build: the driver accepts cuda whether or not it has a GPU itself.
        new TaskDevice("cuda", false).check();
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> new TaskDevice("tpu", false).check());
        assertEquals("--device: no device \"tpu\" in this build (spec \"tpu\"); known: cpu, cuda, reference", e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> new TaskDevice("cpu:0", false).check());
        assertTrue(e.getMessage().contains("cpu:0") && e.getMessage().contains("thread count"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> new TaskDevice("cpu", true).check());
        assertEquals("--cpu-fallback is for a GPU device (--device cuda), not --device cpu", e.getMessage());
    }
}
