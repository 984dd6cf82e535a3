package org.kindling.models.io;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.FilterInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;

/** Streaming reads: tensors arrive in pieces of the chunk size, and a header's claims are checked before anything is allocated. */
class SafetensorsTest {
    /** An input stream that hands out at most 3 bytes per read, as a network stream may. */
    private static InputStream trickle(byte[] bytes) {
        return new FilterInputStream(new ByteArrayInputStream(bytes)) {
            @Override
            public int read(byte[] b, int off, int len) throws IOException {
                return super.read(b, off, Math.min(len, 3));
            }
        };
    }

    private static byte[] file(Map<String, Safetensors.Tensor> tensors) throws IOException {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        Safetensors.write(out, tensors, Map.of("format", "pt"));
        return out.toByteArray();
    }

    private static Map<String, Safetensors.Tensor> tensors() {
        SplittableRandom r = new SplittableRandom(5);
        Map<String, Safetensors.Tensor> t = new LinkedHashMap<>();
        for (int[] shape : new int[][] {{5}, {0}, {13}, {1}, {2, 4}}) {
            float[] data = new float[org.kindling.ops.Tensor.numel(shape)];
            for (int i = 0; i < data.length; i++) {
                data[i] = (float) r.nextGaussian();
            }
            t.put("t" + t.size(), new Safetensors.Tensor(shape, data));
        }
        return t;
    }

    private record Piece(String name, long offset, float[] values) {
    }

    private static Safetensors.Sink recorder(List<Piece> pieces) {
        return new Safetensors.Sink() {
            private String current;

            @Override
            public void begin(String name, int[] shape) {
                current = name;
                pieces.add(new Piece(name, -1, new float[0]));
            }

            @Override
            public void values(long offset, float[] values) {
                pieces.add(new Piece(current, offset, values.clone()));
            }
        };
    }

    @Test
    void tensorsStreamInPiecesOfTheChunkSize() throws IOException {
        Map<String, Safetensors.Tensor> tensors = tensors();
        List<Piece> pieces = new ArrayList<>();
        Safetensors.Header header = Safetensors.read(trickle(file(tensors)), "mem", 8, recorder(pieces));
        assertEquals(List.of("t0", "t1", "t2", "t3", "t4"), header.names());
        assertEquals("pt", header.metadata().get("format"));
        for (Map.Entry<String, Safetensors.Tensor> e : tensors.entrySet()) {
            List<Piece> mine = pieces.stream().filter(p -> p.name().equals(e.getKey()) && p.offset() >= 0).toList();
            float[] whole = new float[e.getValue().data().length];
            long next = 0;
            for (Piece p : mine) {
                assertEquals(next, p.offset(), "pieces come in order");
                assertTrue(p.values().length <= 2, "an 8-byte chunk holds at most 2 values");
                System.arraycopy(p.values(), 0, whole, (int) p.offset(), p.values().length);
                next += p.values().length;
            }
            assertEquals((whole.length + 1) / 2, mine.size(), e.getKey());
            assertArrayEquals(e.getValue().data(), whole, e.getKey());
        }
    }

    @Test
    void aFileTruncatedInsideATensorNamesItAndIsMarkedCorrupt() throws IOException {
        byte[] whole = file(tensors());
        byte[] cut = Arrays.copyOf(whole, whole.length - 30); // inside t4, the last tensor (32 bytes)
        CorruptFileException e = assertThrows(CorruptFileException.class,
                () -> Safetensors.read(trickle(cut), "model.safetensors", 8, recorder(new ArrayList<>())));
        assertTrue(e.getMessage().startsWith("model.safetensors: truncated: tensor t4 ends at byte 108"), e.getMessage());
        byte[] longer = Arrays.copyOf(whole, whole.length + 4);
        e = assertThrows(CorruptFileException.class, () -> Safetensors.read(new ByteArrayInputStream(longer), "x"));
        assertTrue(e.getMessage().contains("accounts for 108 bytes of data but the file holds more"), e.getMessage());
    }

    private static byte[] withHeader(long length, String json) {
        byte[] j = json.getBytes(StandardCharsets.UTF_8);
        return ByteBuffer.allocate(8 + j.length).order(ByteOrder.LITTLE_ENDIAN).putLong(length).put(j).array();
    }

    @Test
    void headerClaimsAreCheckedBeforeAnythingIsAllocated() {
        CorruptFileException e = assertThrows(CorruptFileException.class,
                () -> Safetensors.read(new ByteArrayInputStream(withHeader(1L << 40, "{}")), "h"));
        assertTrue(e.getMessage().contains("the header length field says 1099511627776 bytes, outside 1..104857600"), e.getMessage());
        String huge = "{\"w\":{\"dtype\":\"F32\",\"shape\":[65536,65536],\"data_offsets\":[0,17179869184]}}";
        e = assertThrows(CorruptFileException.class, () -> Safetensors.read(new ByteArrayInputStream(withHeader(huge.length(), huge)), "h"));
        assertTrue(e.getMessage().contains("tensor w of shape [65536,65536] has more than 2^31-1 elements"), e.getMessage());
        // Offsets past 2^31 bytes are read as longs: the gap is reported where it is, not at a wrapped-around int.
        String gap = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                + "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[3000000000,3000000004]}}";
        e = assertThrows(CorruptFileException.class, () -> Safetensors.read(new ByteArrayInputStream(withHeader(gap.length(), gap)), "h"));
        assertTrue(e.getMessage().contains("tensor b starts at byte 3000000000 of the data but the tensors before it end at 4"),
                e.getMessage());
    }
}
