package org.kindling.models.io;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The safetensors format (Hugging Face): an 8-byte little-endian header length, a JSON header
 * naming each tensor's dtype, shape and byte range, then the raw little-endian data. Only F32 is
 * written and read here. Reading streams: the header, then each tensor in pieces (byte offsets are
 * longs, so files may exceed 2 GiB). It checks every claim of the header against the bytes
 * present, so a truncated or foreign file fails with the file's name and what is wrong.
 */
public final class Safetensors {
    private static final ObjectMapper JSON = new ObjectMapper();
    /** Headers beyond this size are not safetensors headers (the format caps them at 100 MB). */
    private static final long MAX_HEADER = 100L << 20;

    /** One F32 tensor on the host. */
    public record Tensor(int[] shape, float[] data) {
        public Tensor {
            if (org.kindling.ops.Tensor.numel(shape) != data.length) {
                throw new IllegalArgumentException(data.length + " values do not fill shape " + java.util.Arrays.toString(shape));
            }
        }
    }

    private Safetensors() {
    }

    /** Writes {@code tensors} in iteration order, with optional string metadata. */
    public static void write(OutputStream out, Map<String, Tensor> tensors, Map<String, String> metadata) throws IOException {
        Map<String, int[]> shapes = new LinkedHashMap<>();
        tensors.forEach((name, t) -> shapes.put(name, t.shape()));
        writeHeader(out, shapes, metadata);
        ByteBuffer buf = ByteBuffer.allocate(1 << 16).order(ByteOrder.LITTLE_ENDIAN);
        for (Tensor t : tensors.values()) {
            for (float f : t.data()) {
                if (!buf.hasRemaining()) {
                    out.write(buf.array(), 0, buf.position());
                    buf.clear();
                }
                buf.putFloat(f);
            }
        }
        out.write(buf.array(), 0, buf.position());
    }

    /**
     * Writes the header of a file holding F32 tensors of these shapes, in iteration order, back to
     * back: their data must follow, each tensor's elements as little-endian floats.
     */
    public static void writeHeader(OutputStream out, Map<String, int[]> shapes, Map<String, String> metadata) throws IOException {
        ObjectNode header = JSON.createObjectNode();
        if (metadata != null && !metadata.isEmpty()) {
            ObjectNode meta = header.putObject("__metadata__");
            metadata.forEach(meta::put);
        }
        long offset = 0;
        for (Map.Entry<String, int[]> e : shapes.entrySet()) {
            ObjectNode t = header.putObject(e.getKey());
            t.put("dtype", "F32");
            ArrayNode shape = t.putArray("shape");
            long numel = 1;
            for (int d : e.getValue()) {
                shape.add(d);
                numel *= d;
            }
            long size = 4L * numel;
            t.putArray("data_offsets").add(offset).add(offset + size);
            offset += size;
        }
        byte[] json = JSON.writeValueAsBytes(header);
        int padded = (json.length + 7) / 8 * 8; // keeps the data 8-byte aligned, as the reference writer does
        ByteBuffer len = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(padded);
        out.write(len.array());
        out.write(json);
        for (int i = json.length; i < padded; i++) {
            out.write(' ');
        }
    }

    /** What a file holds: its tensors in header order and its metadata. */
    public record Contents(Map<String, Tensor> tensors, Map<String, String> metadata) {
    }

    /** Where {@link #read(InputStream, String, Sink)} delivers tensors, one after another in the order of their data. */
    public interface Sink {
        /** Tensor {@code name} of {@code shape} comes next; its values follow through {@link #values}. */
        void begin(String name, int[] shape) throws IOException;

        /** The next {@code values.length} values of the current tensor, the first of them its element {@code offset}. */
        void values(long offset, float[] values) throws IOException;
    }

    /** The header's view of a file: tensor names in header order, and the metadata. */
    public record Header(List<String> names, Map<String, String> metadata) {
    }

    /** Bytes read at a time: tensors stream through a buffer of this size, whatever their size. */
    static final int CHUNK_BYTES = 1 << 20;

    /** Reads a whole file into host arrays; {@code source} names it in errors. */
    public static Contents read(InputStream in, String source) throws IOException {
        Map<String, Tensor> byName = new HashMap<>();
        Header header = read(in, source, new Sink() {
            private float[] data;

            @Override
            public void begin(String name, int[] shape) {
                data = new float[org.kindling.ops.Tensor.numel(shape)];
                byName.put(name, new Tensor(shape, data));
            }

            @Override
            public void values(long offset, float[] values) {
                System.arraycopy(values, 0, data, (int) offset, values.length);
            }
        });
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        header.names().forEach(n -> tensors.put(n, byName.get(n)));
        return new Contents(tensors, header.metadata());
    }

    /**
     * Streams a file: reads the header (its length capped before anything is allocated), checks
     * its claims, then hands each tensor's values to {@code sink} in pieces of at most
     * {@link #CHUNK_BYTES}, so no file or tensor size limits the reader. Format errors, a
     * truncated file included, are {@link CorruptFileException}s naming {@code source}.
     */
    public static Header read(InputStream in, String source, Sink sink) throws IOException {
        return read(in, source, CHUNK_BYTES, sink);
    }

    /** A tensor's place in a file: its name, shape and byte range [begin, end) of the data section. */
    public record Entry(String name, int[] shape, long begin, long end) {
    }

    /** A file's header read and checked: its tensors in the order of their data, its header order, its metadata. */
    public record Layout(List<Entry> entries, List<String> names, Map<String, String> metadata) {
    }

    /**
     * Reads and checks a file's header (its length capped before anything is allocated): the
     * stream is then at the first byte of the data, which holds {@link Layout#entries} back to back.
     */
    public static Layout layout(InputStream in, String source) throws IOException {
        byte[] lengthField = in.readNBytes(8);
        if (lengthField.length < 8) {
            throw new CorruptFileException(source + ": not a safetensors file: " + lengthField.length
                    + " bytes, too short for a header");
        }
        long headerLen = ByteBuffer.wrap(lengthField).order(ByteOrder.LITTLE_ENDIAN).getLong();
        if (headerLen <= 0 || headerLen > MAX_HEADER) {
            throw new CorruptFileException(source + ": not a safetensors file: the header length field says " + headerLen
                    + " bytes, outside 1.." + MAX_HEADER);
        }
        byte[] headerBytes = in.readNBytes((int) headerLen);
        if (headerBytes.length < headerLen) {
            throw new CorruptFileException(source + ": not a safetensors file (or truncated): the header length field says "
                    + headerLen + " bytes but the file has " + headerBytes.length + " after it");
        }
        JsonNode header;
        try {
            header = JSON.readTree(new String(headerBytes, StandardCharsets.UTF_8));
        } catch (IOException e) {
            throw new CorruptFileException(source + ": not a safetensors file: the header is not JSON", e);
        }
        if (header == null || !header.isObject()) {
            throw new CorruptFileException(source + ": not a safetensors file: the header is not a JSON object");
        }
        List<String> names = new ArrayList<>();
        List<Entry> entries = new ArrayList<>();
        Map<String, String> metadata = new LinkedHashMap<>();
        for (Iterator<Map.Entry<String, JsonNode>> it = header.fields(); it.hasNext(); ) {
            Map.Entry<String, JsonNode> e = it.next();
            if (e.getKey().equals("__metadata__")) {
                e.getValue().fields().forEachRemaining(m -> metadata.put(m.getKey(), m.getValue().asText()));
                continue;
            }
            names.add(e.getKey());
            entries.add(entry(source, e.getKey(), e.getValue()));
        }
        // The data is streamed in file order; the format allows neither holes nor overlaps between tensors.
        entries.sort(Comparator.comparingLong(Entry::begin));
        long at = 0;
        for (Entry e : entries) {
            if (e.begin() != at) {
                throw new CorruptFileException(source + ": tensor " + e.name() + " starts at byte " + e.begin()
                        + " of the data but the tensors before it end at " + at + " (holes and overlaps are not allowed)");
            }
            at = e.end();
        }
        return new Layout(entries, names, metadata);
    }

    static Header read(InputStream in, String source, int chunkBytes, Sink sink) throws IOException {
        if (chunkBytes < 4 || chunkBytes % 4 != 0) {
            throw new IllegalArgumentException("chunk of " + chunkBytes + " bytes is not a positive multiple of 4");
        }
        Layout layout = layout(in, source);
        List<Entry> entries = layout.entries();
        long at = entries.isEmpty() ? 0 : entries.get(entries.size() - 1).end();
        byte[] buffer = new byte[chunkBytes];
        float[] full = new float[chunkBytes / 4];
        for (Entry e : entries) {
            sink.begin(e.name(), e.shape().clone());
            for (long pos = e.begin(); pos < e.end(); ) {
                int n = (int) Math.min(chunkBytes, e.end() - pos);
                int got = in.readNBytes(buffer, 0, n);
                if (got < n) {
                    throw new CorruptFileException(source + ": truncated: tensor " + e.name() + " ends at byte " + e.end()
                            + " of the data but only " + (pos + got) + " bytes are present");
                }
                float[] values = n == chunkBytes ? full : new float[n / 4];
                ByteBuffer.wrap(buffer, 0, n).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(values);
                sink.values((pos - e.begin()) / 4, values);
                pos += n;
            }
        }
        if (in.read() >= 0) {
            throw new CorruptFileException(source + ": the header accounts for " + at + " bytes of data but the file holds more");
        }
        return new Header(layout.names(), layout.metadata());
    }

    private static Entry entry(String source, String name, JsonNode t) throws IOException {
        if (!"F32".equals(t.path("dtype").asText())) {
            throw new CorruptFileException(source + ": tensor " + name + " has dtype " + t.path("dtype") + "; only F32 is supported");
        }
        JsonNode shapeNode = t.path("shape");
        JsonNode offsets = t.path("data_offsets");
        if (!shapeNode.isArray() || !offsets.isArray() || offsets.size() != 2) {
            throw new CorruptFileException(source + ": tensor " + name + " lacks a shape or a [begin, end] data_offsets pair");
        }
        int[] shape = new int[shapeNode.size()];
        long numel = 1;
        for (int i = 0; i < shape.length; i++) {
            shape[i] = shapeNode.get(i).canConvertToInt() ? shapeNode.get(i).asInt() : -1;
            if (shape[i] < 0) {
                throw new CorruptFileException(source + ": tensor " + name + " has a bad shape " + shapeNode);
            }
            numel = numel > Integer.MAX_VALUE ? numel : numel * shape[i];
        }
        if (numel > Integer.MAX_VALUE) {
            throw new CorruptFileException(source + ": tensor " + name + " of shape " + shapeNode + " has more than 2^31-1 elements, "
                    + "more than one tensor holds");
        }
        long begin = offsets.get(0).canConvertToLong() ? offsets.get(0).asLong() : -1;
        long end = offsets.get(1).canConvertToLong() ? offsets.get(1).asLong() : -1;
        if (begin < 0 || end < begin || end - begin != 4 * numel) {
            throw new CorruptFileException(source + ": tensor " + name + " of shape " + shapeNode + " has data_offsets " + offsets
                    + ", which do not span " + 4 * numel + " bytes");
        }
        return new Entry(name, shape, begin, end);
    }
}
