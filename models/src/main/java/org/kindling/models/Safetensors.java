package org.kindling.models;

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
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * The safetensors format (Hugging Face): an 8-byte little-endian header length, a JSON header
 * naming each tensor's dtype, shape and byte range, then the raw little-endian data. Only F32 is
 * written and read here. Reading checks every claim of the header against the bytes present, so a
 * truncated or foreign file fails with the file's name and what is wrong.
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
        ObjectNode header = JSON.createObjectNode();
        if (metadata != null && !metadata.isEmpty()) {
            ObjectNode meta = header.putObject("__metadata__");
            metadata.forEach(meta::put);
        }
        long offset = 0;
        for (Map.Entry<String, Tensor> e : tensors.entrySet()) {
            ObjectNode t = header.putObject(e.getKey());
            t.put("dtype", "F32");
            ArrayNode shape = t.putArray("shape");
            for (int d : e.getValue().shape()) {
                shape.add(d);
            }
            long size = 4L * e.getValue().data().length;
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

    /** What a file holds: its tensors in header order and its metadata. */
    public record Contents(Map<String, Tensor> tensors, Map<String, String> metadata) {
    }

    /** Reads a whole file; {@code source} names it in errors. */
    public static Contents read(InputStream in, String source) throws IOException {
        byte[] bytes = in.readAllBytes();
        if (bytes.length < 8) {
            throw new IOException(source + ": not a safetensors file: " + bytes.length + " bytes, too short for a header");
        }
        long headerLen = ByteBuffer.wrap(bytes, 0, 8).order(ByteOrder.LITTLE_ENDIAN).getLong();
        if (headerLen <= 0 || headerLen > MAX_HEADER || headerLen > bytes.length - 8) {
            throw new IOException(source + ": not a safetensors file (or truncated): the header length field says "
                    + headerLen + " bytes but the file has " + (bytes.length - 8) + " after it");
        }
        JsonNode header;
        try {
            header = JSON.readTree(new String(bytes, 8, (int) headerLen, StandardCharsets.UTF_8));
        } catch (IOException e) {
            throw new IOException(source + ": not a safetensors file: the header is not JSON", e);
        }
        if (header == null || !header.isObject()) {
            throw new IOException(source + ": not a safetensors file: the header is not a JSON object");
        }
        int dataStart = 8 + (int) headerLen;
        long dataSize = bytes.length - dataStart;
        Map<String, Tensor> tensors = new LinkedHashMap<>();
        Map<String, String> metadata = new LinkedHashMap<>();
        long end = 0;
        for (Iterator<Map.Entry<String, JsonNode>> it = header.fields(); it.hasNext(); ) {
            Map.Entry<String, JsonNode> e = it.next();
            if (e.getKey().equals("__metadata__")) {
                e.getValue().fields().forEachRemaining(m -> metadata.put(m.getKey(), m.getValue().asText()));
                continue;
            }
            String name = e.getKey();
            JsonNode t = e.getValue();
            if (!"F32".equals(t.path("dtype").asText())) {
                throw new IOException(source + ": tensor " + name + " has dtype " + t.path("dtype") + "; only F32 is supported");
            }
            JsonNode shapeNode = t.path("shape");
            JsonNode offsets = t.path("data_offsets");
            if (!shapeNode.isArray() || !offsets.isArray() || offsets.size() != 2) {
                throw new IOException(source + ": tensor " + name + " lacks a shape or a [begin, end] data_offsets pair");
            }
            int[] shape = new int[shapeNode.size()];
            for (int i = 0; i < shape.length; i++) {
                shape[i] = shapeNode.get(i).asInt(-1);
                if (shape[i] < 0) {
                    throw new IOException(source + ": tensor " + name + " has a bad shape " + shapeNode);
                }
            }
            long begin = offsets.get(0).asLong(-1);
            long stop = offsets.get(1).asLong(-1);
            long numel = 1;
            for (int d : shape) {
                numel *= d;
            }
            if (begin < 0 || stop < begin || stop - begin != 4 * numel) {
                throw new IOException(source + ": tensor " + name + " of shape " + shapeNode + " has data_offsets " + offsets
                        + ", which do not span " + 4 * numel + " bytes");
            }
            if (stop > dataSize) {
                throw new IOException(source + ": truncated: tensor " + name + " ends at byte " + stop + " of the data but only "
                        + dataSize + " bytes are present");
            }
            float[] data = new float[(int) numel];
            ByteBuffer.wrap(bytes, dataStart + (int) begin, (int) (stop - begin)).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(data);
            tensors.put(name, new Tensor(shape, data));
            end = Math.max(end, stop);
        }
        if (end != dataSize) {
            throw new IOException(source + ": the header accounts for " + end + " bytes of data but the file holds " + dataSize);
        }
        return new Contents(tensors, metadata);
    }
}
