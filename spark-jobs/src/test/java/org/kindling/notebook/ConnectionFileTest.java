package org.kindling.notebook;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class ConnectionFileTest {
    @TempDir
    Path dir;

    private Path file(String ip, String key, String transport) throws Exception {
        Path f = dir.resolve("kernel-" + System.nanoTime() + ".json");
        Files.writeString(f, """
                {"shell_port": 50001, "iopub_port": 50002, "stdin_port": 50003, "control_port": 50004,
                 "hb_port": 50005, "ip": "%s", "key": "%s", "transport": "%s",
                 "signature_scheme": "hmac-sha256", "kernel_name": "kindling"}""".formatted(ip, key, transport));
        return f;
    }

    @Test
    void loopbackSignedTcpIsAccepted() throws Exception {
        var props = ConnectionFile.read(file("127.0.0.1", "secret", "tcp"));
        assertEquals("127.0.0.1", props.getIp());
        assertEquals(50001, props.getShellPort());
    }

    @Test
    void everyInterfaceOrAnotherHostIsRefused() throws Exception {
        for (String ip : new String[] {"0.0.0.0", "*", "10.1.2.3", "::", "localhost.example.com"}) {
            var e = assertThrows(IllegalArgumentException.class, () -> ConnectionFile.read(file(ip, "k", "tcp")), ip);
            assertTrue(e.getMessage().contains("not a loopback address"), e.getMessage());
        }
        assertTrue(ConnectionFile.isLoopbackLiteral("::1"));
        assertFalse(ConnectionFile.isLoopbackLiteral("localhost"), "names are not resolved");
    }

    @Test
    void unsignedIpcOversizedAndMalformedFilesAreRefusedNamingTheField() throws Exception {
        var unsigned = assertThrows(IllegalArgumentException.class, () -> ConnectionFile.read(file("127.0.0.1", "", "tcp")));
        assertTrue(unsigned.getMessage().contains("key is empty"), unsigned.getMessage());
        var ipc = assertThrows(IllegalArgumentException.class, () -> ConnectionFile.read(file("127.0.0.1", "k", "ipc")));
        assertTrue(ipc.getMessage().contains("transport"), ipc.getMessage());
        Path big = dir.resolve("big.json");
        Files.writeString(big, " ".repeat(ConnectionFile.MAX_BYTES + 1));
        var tooBig = assertThrows(IllegalArgumentException.class, () -> ConnectionFile.read(big));
        assertTrue(tooBig.getMessage().contains("larger than"), tooBig.getMessage());
        Path garbage = dir.resolve("garbage.json");
        Files.writeString(garbage, "{not json");
        var notJson = assertThrows(IllegalArgumentException.class, () -> ConnectionFile.read(garbage));
        assertTrue(notJson.getMessage().startsWith(garbage.toString()), notJson.getMessage());
    }
}
