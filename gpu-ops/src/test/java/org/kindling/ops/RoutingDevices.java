package org.kindling.ops;

import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.kindling.ops.cpu.CpuDevice;
import org.kindling.ops.reference.ReferenceDevice;

/** The devices the MoE kernel tests compare: the CPU on 3 threads and on 1, and the fp64 reference; closed after the class. */
abstract class RoutingDevices {
    static final int C = 59;
    static Device cpu;
    static Device cpu1;
    static Device ref;

    @BeforeAll
    static void open() {
        cpu = CpuDevice.open(3);
        cpu1 = CpuDevice.open(1);
        ref = ReferenceDevice.open();
    }

    @AfterAll
    static void close() {
        cpu.close();
        cpu1.close();
        ref.close();
    }
}
