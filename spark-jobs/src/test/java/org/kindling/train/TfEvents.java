package org.kindling.train;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.google.protobuf.CodedInputStream;
import com.google.protobuf.WireFormat;
import java.io.IOException;
import java.math.BigDecimal;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;

/** A reader of TensorBoard event files as TensorBoard reads them: TFRecord framing, both CRCs checked, Event protos decoded. */
final class TfEvents {
    /** One decoded {@code tensorflow.Event}; {@code fileVersion} null for a summary event. */
    record Event(double wallTime, long step, String fileVersion, Map<String, Float> scalars) {
    }

    private TfEvents() {
    }

    /** The events of {@code file}, in order; a broken record fails naming its offset and which check failed. */
    static List<Event> read(byte[] file) throws IOException {
        ByteBuffer b = ByteBuffer.wrap(file).order(ByteOrder.LITTLE_ENDIAN);
        List<Event> out = new ArrayList<>();
        while (b.hasRemaining()) {
            int at = b.position();
            if (b.remaining() < 12) {
                throw new IOException("record at byte " + at + ": " + b.remaining() + " bytes left, a header needs 12");
            }
            long length = b.getLong();
            if (b.getInt() != TensorBoardEvents.maskedCrc(file, at, 8)) {
                throw new IOException("record at byte " + at + ": length CRC mismatch");
            }
            if (length < 0 || length > b.remaining() - 4) {
                throw new IOException("record at byte " + at + ": length " + length + " exceeds the " + (b.remaining() - 4) + " bytes left");
            }
            int start = b.position();
            b.position(start + (int) length);
            if (b.getInt() != TensorBoardEvents.maskedCrc(file, start, (int) length)) {
                throw new IOException("record at byte " + at + ": data CRC mismatch");
            }
            out.add(decode(CodedInputStream.newInstance(file, start, (int) length)));
        }
        return out;
    }

    private static Event decode(CodedInputStream in) throws IOException {
        double wallTime = 0;
        long step = 0;
        String fileVersion = null;
        Map<String, Float> scalars = new LinkedHashMap<>();
        for (int tag = in.readTag(); tag != 0; tag = in.readTag()) {
            switch (WireFormat.getTagFieldNumber(tag)) {
                case 1 -> wallTime = in.readDouble();
                case 2 -> step = in.readInt64();
                case 3 -> fileVersion = in.readString();
                case 5 -> {
                    CodedInputStream summary = CodedInputStream.newInstance(in.readByteArray());
                    for (int t = summary.readTag(); t != 0; t = summary.readTag()) {
                        assertEquals(1, WireFormat.getTagFieldNumber(t), "Summary holds only values");
                        CodedInputStream value = CodedInputStream.newInstance(summary.readByteArray());
                        String name = null;
                        Float v = null;
                        for (int f = value.readTag(); f != 0; f = value.readTag()) {
                            switch (WireFormat.getTagFieldNumber(f)) {
                                case 1 -> name = value.readString();
                                case 2 -> v = value.readFloat();
                                default -> throw new IOException("unexpected Summary.Value field " + WireFormat.getTagFieldNumber(f));
                            }
                        }
                        scalars.put(name, v);
                    }
                }
                default -> throw new IOException("unexpected Event field " + WireFormat.getTagFieldNumber(tag));
            }
        }
        return new Event(wallTime, step, fileVersion, scalars);
    }

    /** The run's one events file under tb/. */
    static Path file(Path run) throws IOException {
        try (Stream<Path> s = Files.list(run.resolve(TensorBoardEvents.DIR))) {
            List<Path> files = s.toList();
            assertEquals(1, files.size(), "one events file and nothing else (no checksum or temporary file): " + files);
            assertTrue(files.get(0).getFileName().toString().startsWith("events.out.tfevents."), files.toString());
            return files.get(0);
        }
    }

    /**
     * Checks that the run's events file starts with the file_version event and then holds exactly metrics.jsonl's steps,
     * each with a {@code train/FIELD} scalar per field of its line (a null there is a non-finite value here).
     */
    static void assertMatchesMetrics(Path run) throws IOException {
        List<Event> events = read(Files.readAllBytes(file(run)));
        assertEquals(TensorBoardEvents.FILE_VERSION, events.get(0).fileVersion());
        List<String> lines = Files.readAllLines(run.resolve(Progress.METRICS));
        assertEquals(lines.size(), events.size() - 1, "one event per metrics.jsonl line");
        // Exact decimals: a value's tolerance is half a unit of the last digit metrics.jsonl printed.
        ObjectMapper json = new ObjectMapper().enable(DeserializationFeature.USE_BIG_DECIMAL_FOR_FLOATS);
        for (int i = 0; i < lines.size(); i++) {
            JsonNode line = json.readTree(lines.get(i));
            Event e = events.get(i + 1);
            assertEquals(line.get("step").asLong(), e.step());
            assertTrue(e.wallTime() >= events.get(0).wallTime() - 1, "wall time " + e.wallTime());
            List<String> tags = new ArrayList<>();
            for (Iterator<String> names = line.fieldNames(); names.hasNext(); ) {
                String name = names.next();
                if (!name.equals("step")) {
                    tags.add("train/" + name);
                }
            }
            assertEquals(tags, List.copyOf(e.scalars().keySet()), "tags of step " + e.step());
            for (String tag : tags) {
                JsonNode expected = line.get(tag.substring("train/".length()));
                float actual = e.scalars().get(tag);
                if (expected.isNull()) {
                    assertTrue(!Float.isFinite(actual), tag + " at step " + e.step() + " is " + actual);
                } else {
                    // metrics.jsonl rounds to its printed digits, the event holds a float (24-bit mantissa).
                    BigDecimal v = expected.decimalValue();
                    double tolerance = 0.5 * Math.pow(10, -v.scale()) + Math.abs(v.doubleValue()) * 0x1p-23;
                    assertEquals(v.doubleValue(), actual, tolerance, tag + " at step " + e.step());
                }
            }
        }
    }
}
