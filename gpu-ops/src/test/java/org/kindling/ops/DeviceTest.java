package org.kindling.ops;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import org.junit.jupiter.api.Test;
import org.kindling.ops.cpu.CpuDevice;
import org.kindling.ops.cpu.CpuDeviceProvider;
import org.kindling.ops.reference.ReferenceDevice;
import org.kindling.ops.reference.ReferenceDeviceProvider;

class DeviceTest {
    @Test
    void serviceLoaderFindsBothProvidersByName() {
        List<DeviceProvider> all = Device.providers();
        assertEquals(List.of("cpu", "reference"), all.stream().map(DeviceProvider::name).toList());
        assertInstanceOf(CpuDeviceProvider.class, all.get(0));
        assertInstanceOf(ReferenceDeviceProvider.class, all.get(1));
        assertTrue(all.stream().allMatch(p -> p.unavailable().isEmpty()), "cpu and reference open everywhere");
    }

    @Test
    void cpuOpensWithTheThreadsItNames() {
        try (Device d = Device.open("cpu:3")) {
            assertInstanceOf(CpuDevice.class, d);
            assertEquals(Device.Kind.CPU, d.kind());
            assertEquals(3, d.threads());
            try (Tensor t = d.fromFloats(new float[] {1, 2}, 2)) {
                assertEquals(2f, t.toFloatArray()[1]);
            }
        }
        try (Device d = Device.open("cpu")) {
            assertEquals(Runtime.getRuntime().availableProcessors(), d.threads());
        }
    }

    @Test
    void referenceOpensByName() {
        try (Device d = Device.open("reference")) {
            assertInstanceOf(ReferenceDevice.class, d);
            assertEquals(Device.Kind.REFERENCE, d.kind());
            assertEquals("reference", d.toString());
        }
    }

    @Test
    void unknownNameListsTheKnownOnes() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Device.open("cuda:0"));
        assertEquals("no device \"cuda\" in this build (spec \"cuda:0\"); known: cpu, reference", e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> Device.check("cuda"));
        assertTrue(e.getMessage().startsWith("no device \"cuda\" in this build"), e.getMessage());
    }

    @Test
    void badArgumentsSayWhatTheyShouldBe() {
        for (String spec : new String[] {"cpu:0", "cpu:x", "cpu:-2", "cpu:"}) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Device.check(spec), spec);
            assertEquals("device \"" + spec + "\": the argument is the thread count, a whole number >= 1", e.getMessage());
            assertThrows(IllegalArgumentException.class, () -> Device.open(spec), spec);
        }
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> Device.open("reference:1"));
        assertEquals("device \"reference:1\": reference takes no argument", e.getMessage());
        for (String blank : new String[] {"", " ", null}) {
            e = assertThrows(IllegalArgumentException.class, () -> Device.check(blank));
            assertTrue(e.getMessage().startsWith("empty device spec"), e.getMessage());
        }
    }

    @Test
    void specSplitsAtTheFirstColon() {
        assertEquals("cuda", Device.name("cuda:1"));
        assertEquals("1", Device.argument("cuda:1"));
        assertEquals("cpu", Device.name("cpu"));
        assertNull(Device.argument("cpu"));
        Device.check("cpu:2");
        Device.check("reference");
    }

    /** Allocations count every owned tensor; scratch handed back is reused zero-filled, best fit first, and freed with the device. */
    @Test
    void scratchIsReusedZeroFilledAndOnlyNewBuffersCountAsAllocations() {
        try (Device d = CpuDevice.open(1)) {
            long before = d.allocations();
            try (Tensor big = d.scratch(DType.F32, 8, 4); Tensor small = d.scratch(DType.F32, 3)) {
                big.copyFrom(new float[32]);
                small.copyFrom(new float[] {1, 2, 3});
            }
            assertEquals(before + 2, d.allocations());
            long live = d.liveBytes();
            try (Tensor s = d.scratch(DType.F32, 2); Tensor b = d.scratch(DType.F32, 5, 5)) {
                assertEquals(List.of(0f, 0f), List.of(s.toFloatArray()[0], s.toFloatArray()[1]), "reused scratch is zeroed");
                assertEquals(2, s.numel());
                assertEquals(25, b.numel());
            }
            assertEquals(before + 2, d.allocations(), "both requests fit buffers handed back");
            assertEquals(live, d.liveBytes());
            try (Tensor grown = d.scratch(DType.F32, 40)) {
                assertEquals(40, grown.numel());
            }
            assertEquals(before + 3, d.allocations(), "a request larger than every idle buffer allocates");
        }
    }

    /** An empty request neither takes a pooled buffer nor counts as an allocation. */
    @Test
    void emptyScratchLeavesThePoolAlone() {
        try (Device d = CpuDevice.open(1)) {
            try (Tensor small = d.scratch(DType.F32, 3)) {
                small.copyFrom(new float[] {1, 2, 3});
            }
            long before = d.allocations();
            long live = d.liveBytes();
            try (Tensor empty = d.scratch(DType.F32, 0, 4); Tensor again = d.scratch(DType.F32, 3)) {
                assertEquals(0, empty.numel());
                assertEquals(List.of(0, 4), List.of(empty.shape()[0], empty.shape()[1]));
                assertEquals(before, d.allocations(), "the 3-element request reuses the idle buffer the empty one left");
                assertEquals(live, d.liveBytes());
            }
            assertEquals(before, d.allocations());
        }
    }
}
