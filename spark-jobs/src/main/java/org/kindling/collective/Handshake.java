package org.kindling.collective;

import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import java.security.MessageDigest;
import java.security.SecureRandom;
import java.util.HexFormat;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

/**
 * Mutual HMAC-SHA256 challenge-response on a fresh connection: each side sends a random nonce and
 * proves it holds the run's secret by MACing both nonces, so the secret never crosses the wire and
 * a recorded exchange cannot be replayed. {@code purpose} separates the ring from the coordinator,
 * so a proof made for one is not accepted by the other.
 */
public final class Handshake {
    private static final int MAGIC = 0x4B4E444C; // "KNDL"
    private static final int NONCE = 32;
    private static final SecureRandom RANDOM = new SecureRandom();

    /** Raised when the other side does not prove it holds the secret. */
    public static final class Refused extends IOException {
        Refused(String message) {
            super(message);
        }
    }

    private Handshake() {
    }

    /** A new per-run secret, hex-encoded. */
    public static String newSecret() {
        byte[] b = new byte[32];
        RANDOM.nextBytes(b);
        return HexFormat.of().formatHex(b);
    }

    /** The accepting side. The socket's read timeout bounds how long a silent peer is waited for. */
    public static void accept(Socket s, String secret, String purpose) throws IOException {
        DataOutputStream out = new DataOutputStream(s.getOutputStream());
        DataInputStream in = new DataInputStream(s.getInputStream());
        byte[] mine = nonce();
        out.writeInt(MAGIC);
        out.write(mine);
        out.flush();
        if (in.readInt() != MAGIC) {
            throw new Refused("not a Kindling peer (bad greeting)");
        }
        byte[] theirs = in.readNBytes(NONCE);
        byte[] proof = in.readNBytes(32);
        if (theirs.length != NONCE || !MessageDigest.isEqual(proof, mac(secret, purpose + "/client", mine, theirs))) {
            throw new Refused("failed authentication (wrong or missing run secret)");
        }
        out.write(mac(secret, purpose + "/server", theirs, mine));
        out.flush();
    }

    /** The connecting side. */
    public static void connect(Socket s, String secret, String purpose) throws IOException {
        DataOutputStream out = new DataOutputStream(s.getOutputStream());
        DataInputStream in = new DataInputStream(s.getInputStream());
        if (in.readInt() != MAGIC) {
            throw new Refused("not a Kindling peer (bad greeting)");
        }
        byte[] theirs = in.readNBytes(NONCE);
        byte[] mine = nonce();
        out.writeInt(MAGIC);
        out.write(mine);
        out.write(mac(secret, purpose + "/client", theirs, mine));
        out.flush();
        byte[] proof = in.readNBytes(32);
        if (!MessageDigest.isEqual(proof, mac(secret, purpose + "/server", mine, theirs))) {
            throw new Refused("the peer failed authentication (wrong run secret)");
        }
    }

    private static byte[] nonce() {
        byte[] b = new byte[NONCE];
        RANDOM.nextBytes(b);
        return b;
    }

    private static byte[] mac(String secret, String purpose, byte[] first, byte[] second) {
        try {
            Mac mac = Mac.getInstance("HmacSHA256");
            mac.init(new SecretKeySpec(secret.getBytes(StandardCharsets.UTF_8), "HmacSHA256"));
            mac.update(purpose.getBytes(StandardCharsets.UTF_8));
            mac.update(first);
            mac.update(second);
            return mac.doFinal();
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException("HmacSHA256 is unavailable in this JVM", e);
        }
    }
}
