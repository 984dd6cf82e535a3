package org.kindling.notebook;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.io.InputStream;
import java.net.InetAddress;
import java.net.UnknownHostException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import org.dflib.jjava.jupyter.kernel.KernelConnectionProperties;

/** Reads and checks the connection file Jupyter starts a kernel with. */
final class ConnectionFile {
    /** A connection file is a few hundred bytes; anything near this is not one. */
    static final int MAX_BYTES = 64 * 1024;

    private ConnectionFile() {
    }

    /**
     * The file's properties, refused unless the kernel would bind to loopback over TCP and sign
     * messages with a key: anyone who can reach an unsigned kernel runs code in it.
     */
    static KernelConnectionProperties read(Path file) throws IOException {
        byte[] bytes;
        try (InputStream in = Files.newInputStream(file)) {
            bytes = in.readNBytes(MAX_BYTES + 1);
        }
        if (bytes.length > MAX_BYTES) {
            throw new IllegalArgumentException(file + ": larger than " + MAX_BYTES + " bytes, not a Jupyter connection file");
        }
        String text = new String(bytes, StandardCharsets.UTF_8);
        JsonNode json;
        try {
            json = new ObjectMapper().readTree(text);
        } catch (IOException e) {
            throw new IllegalArgumentException(file + ": not JSON: " + e.getMessage());
        }
        if (json == null || !json.isObject()) {
            throw new IllegalArgumentException(file + ": not a JSON object");
        }
        String transport = json.path("transport").asText("");
        if (!transport.equals("tcp")) {
            throw new IllegalArgumentException(file + ": transport \"" + transport + "\" is not supported (only tcp)");
        }
        String ip = json.path("ip").asText("");
        if (!isLoopbackLiteral(ip)) {
            throw new IllegalArgumentException(file + ": ip \"" + ip
                    + "\" is not a loopback address; the kernel binds only to loopback (e.g. 127.0.0.1)");
        }
        for (String port : new String[] {"shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"}) {
            int p = json.path(port).asInt(-1);
            if (p < 1 || p > 65535) {
                throw new IllegalArgumentException(file + ": " + port + " is " + json.path(port) + ", not a port in 1..65535");
            }
        }
        if (!json.path("signature_scheme").asText("").equals("hmac-sha256")) {
            throw new IllegalArgumentException(file + ": signature_scheme must be hmac-sha256, not "
                    + json.path("signature_scheme"));
        }
        if (json.path("key").asText("").isEmpty()) {
            throw new IllegalArgumentException(file + ": key is empty; the kernel only accepts signed messages");
        }
        return KernelConnectionProperties.parse(text);
    }

    /** An IPv4 or IPv6 literal in the loopback range; host names are refused rather than resolved. */
    static boolean isLoopbackLiteral(String ip) {
        if (!ip.matches("[0-9.]+|[0-9a-fA-F:]*:[0-9a-fA-F:.]*")) {
            return false;
        }
        try {
            return InetAddress.getByName(ip).isLoopbackAddress();
        } catch (UnknownHostException e) {
            return false;
        }
    }
}
