package org.kindling.models.pipeline;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.cpu.CpuDevice;

/** A stage's two receiving channels as one inbox: arrival order across them, each in order, and a reader's failure as the stage's. */
class ChannelInboxTest {
    private static final Duration WAIT = Duration.ofSeconds(10);

    @Test
    void messagesOfBothChannelsComeInTheOrderTheyArrived() throws Exception {
        try (Device dev = CpuDevice.open(1); InMemoryChannel act = new InMemoryChannel("act", 4);
             InMemoryChannel grad = new InMemoryChannel("grad", 4);
             ChannelInbox inbox = new ChannelInbox("stage 1", act, grad, 2, WAIT)) {
            List<String> got = new ArrayList<>();
            act.send(0, dev.allocate(DType.F32, 1, 3), WAIT);
            got.add(take(inbox));
            grad.send(0, dev.allocate(DType.F32, 1, 3), WAIT);
            got.add(take(inbox));
            act.send(1, dev.allocate(DType.F32, 1, 3), WAIT);
            got.add(take(inbox));
            grad.send(1, dev.allocate(DType.F32, 1, 3), WAIT);
            got.add(take(inbox));
            assertEquals(List.of("ACTIVATION 0", "GRADIENT 0", "ACTIVATION 1", "GRADIENT 1"), got);
            assertNull(inbox.poll(Duration.ofMillis(50)), "each reader takes the step's count only");
        }
    }

    @Test
    void aMessageOutOfStepFailsThePoll() {
        try (Device dev = CpuDevice.open(1); InMemoryChannel act = new InMemoryChannel("act", 4);
             ChannelInbox inbox = new ChannelInbox("stage 1", act, null, 2, WAIT)) {
            act.send(1, dev.allocate(DType.F32, 1, 3), WAIT);
            PipelineException e = assertThrows(PipelineException.class, () -> inbox.poll(WAIT));
            assertTrue(e.getMessage().contains("expected micro-batch 0, got 1"), e.getMessage());
        }
    }

    private static String take(ChannelInbox inbox) {
        StageInbox.Message m = inbox.poll(WAIT);
        m.data().close();
        return m.kind() + " " + m.microBatch();
    }
}
