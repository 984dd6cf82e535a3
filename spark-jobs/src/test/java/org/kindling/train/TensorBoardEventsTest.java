package org.kindling.train;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.apache.hadoop.conf.Configuration;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.kindling.models.train.StepResult;

/** TensorBoard's events file: the steps metrics.jsonl gets, framed and checksummed as TensorBoard reads them. */
class TensorBoardEventsTest {
    @TempDir
    Path dir;

    private static StepResult step(int step, int attempt) {
        return new StepResult(step, attempt + step / 1000.0, 1e-3 * step, 0.5 + step, 64 * step, 0.01,
                new TreeMap<>(Map.of("moe_balance_loss", 0.01 * step + attempt, "dropped_fraction", step == 2 ? Double.NaN : 0.25)));
    }

    @Test
    void theEventsFileHoldsMetricsJsonlsStepsAcrossAppendsAndARewind() throws IOException {
        Progress p = new Progress(new HadoopRunStorage(dir.toString(), new Configuration()), ProgressTest.CFG);
        for (int s = 1; s <= 6; s++) {
            p.accept(step(s, 0));
        }
        TfEvents.assertMatchesMetrics(dir);
        long appended = Files.size(dir.resolve(p.eventsFile()));
        // A retried stage resumes from step 4: steps 5 and 6 are replaced, then the run goes on.
        for (int s = 5; s <= 8; s++) {
            p.accept(step(s, 1));
        }
        TfEvents.assertMatchesMetrics(dir);
        List<TfEvents.Event> events = TfEvents.read(Files.readAllBytes(dir.resolve(p.eventsFile())));
        assertEquals(List.of(0L, 1L, 2L, 3L, 4L, 5L, 6L, 7L, 8L), events.stream().map(TfEvents.Event::step).toList());
        assertEquals(1.005f, events.get(5).scalars().get("train/loss"), "the retry's step 5 replaced the first attempt's");
        assertEquals(List.of("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/dropped_fraction",
                "train/moe_balance_loss"), List.copyOf(events.get(1).scalars().keySet()));
        assertTrue(Float.isNaN(events.get(2).scalars().get("train/dropped_fraction")));
        assertTrue(Files.size(dir.resolve(p.eventsFile())) > appended);
    }

    @Test
    void aCorruptedByteFailsTheCrcCheckOfItsRecord() throws IOException {
        Progress p = new Progress(new HadoopRunStorage(dir.toString(), new Configuration()), ProgressTest.CFG);
        p.accept(step(1, 0));
        p.accept(step(2, 0));
        byte[] good = Files.readAllBytes(TfEvents.file(dir));
        assertEquals(3, TfEvents.read(good).size());
        int second = 8 + 4 + TensorBoardEvents.event(0, 0, TensorBoardEvents.FILE_VERSION, null).length + 4;
        byte[] data = good.clone();
        data[second + 20] ^= 0x10;
        assertEquals("record at byte " + second + ": data CRC mismatch", assertThrows(IOException.class, () -> TfEvents.read(data))
                .getMessage());
        byte[] length = good.clone();
        length[second] ^= 0x01;
        assertEquals("record at byte " + second + ": length CRC mismatch",
                assertThrows(IOException.class, () -> TfEvents.read(length)).getMessage());
        byte[] truncated = java.util.Arrays.copyOf(good, good.length - 3);
        assertTrue(assertThrows(IOException.class, () -> TfEvents.read(truncated)).getMessage().contains("exceeds"));
    }

    @Test
    void aFramedRecordIsTheDocumentedLayout() {
        byte[] data = {1, 2, 3};
        byte[] rec = TensorBoardEvents.record(data);
        assertEquals(8 + 4 + 3 + 4, rec.length);
        assertEquals(3, rec[0]);
        // The TFRecord masked CRC32C of the empty string is the mask delta itself (CRC32C("") = 0).
        assertEquals(0xa282ead8, TensorBoardEvents.maskedCrc(new byte[0], 0, 0));
        // CRC32C("123456789") = 0xE3069283 (RFC 3720's check value), masked by TFRecord's rule.
        int c = 0xE3069283;
        assertEquals(((c >>> 15) | (c << 17)) + 0xa282ead8, TensorBoardEvents.maskedCrc("123456789".getBytes(), 0, 9));
    }

    @Test
    void anUnwritableEventsDirectoryIsLoggedAndWrittenOnceItCanBe() throws IOException {
        Progress p = new Progress(new HadoopRunStorage(dir.toString(), new Configuration()), ProgressTest.CFG);
        Files.writeString(dir.resolve(TensorBoardEvents.DIR), "a file where the directory goes");
        for (int s = 1; s <= 4; s++) {
            p.accept(step(s, 0));
        }
        assertEquals(4, Files.readAllLines(dir.resolve(Progress.METRICS)).size(), "metrics.jsonl does not wait for TensorBoard");
        Files.delete(dir.resolve(TensorBoardEvents.DIR));
        p.accept(step(5, 0));
        p.accept(step(6, 0));
        TfEvents.assertMatchesMetrics(dir);
    }
}
