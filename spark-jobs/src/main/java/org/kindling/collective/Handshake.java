package org.kindling.collective;

import java.io.DataInputStream;
import java.io.EOFException;
import java.io.IOException;
import java.io.OutputStream;
import java.net.Socket;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import java.security.MessageDigest;
import java.security.SecureRandom;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

/**
 * Mutual HMAC-SHA256 challenge-response on a fresh connection: each side sends a random nonce and
 * proves it holds the run's secret by MACing both nonces, so the secret never crosses the wire and
 * a recorded exchange cannot be replayed. {@code purpose} separates the ring from the coordinator,
 * so a proof made for one is not accepted by the other. Both sides then derive a session key from
 * the secret and both nonces, and one key per direction from it, which {@link Link} MACs every
 * frame with.
 *
 * <p>The connecting side is blocking ({@link #connect}); the accepting side is the non-blocking
 * {@link Acceptor} state that {@link Gate} drives, so that strangers cost no thread.
 */
public final class Handshake {
    static final int MAGIC = 0x4B4E444C; // "KNDL"
    static final int NONCE = 32;
    static final int TAG = 32;
    /** The acceptor's greeting: magic and its nonce. */
    static final int GREETING_BYTES = 4 + NONCE;
    /** The connector's answer: magic, its nonce and its proof. */
    static final int HELLO_BYTES = 4 + NONCE + TAG;
    private static final SecureRandom RANDOM = new SecureRandom();

    /** Raised when the other side does not prove it holds the secret. */
    public static class Refused extends IOException {
        Refused(String message) {
            super(message);
        }
    }

    /** The acceptor hung up before proving itself: it refused our proof, or it was overloaded and dropped us. */
    static final class HungUp extends Refused {
        HungUp(String message) {
            super(message);
        }
    }

    /** The MACs of an authenticated connection: one keyed for what this side sends, one for what it receives. */
    static final class Session {
        final Mac send;
        final Mac receive;

        private Session(Mac send, Mac receive) {
            this.send = send;
            this.receive = receive;
        }
    }

    private Handshake() {
    }

    /** The connecting side, blocking; the socket's read timeout bounds each wait for the acceptor. */
    static Session connect(Socket s, RunSecret secret, String purpose) throws IOException {
        // Unbuffered: nothing past the handshake may be consumed here, the link reads it.
        DataInputStream in = new DataInputStream(s.getInputStream());
        OutputStream out = s.getOutputStream();
        byte[] theirs = new byte[NONCE];
        byte[] proof = new byte[TAG];
        byte[] mine = nonce();
        try {
            if (in.readInt() != MAGIC) {
                throw new Refused("not a Kindling peer (bad greeting)");
            }
            in.readFully(theirs);
            out.write(ByteBuffer.allocate(HELLO_BYTES).putInt(MAGIC).put(mine).put(proof(secret, purpose + "/client", theirs, mine))
                    .array());
            out.flush();
            in.readFully(proof);
        } catch (EOFException e) {
            throw new HungUp("the peer hung up during authentication (it does not hold this run's secret, or it dropped us)");
        }
        if (!MessageDigest.isEqual(proof, proof(secret, purpose + "/server", mine, theirs))) {
            throw new Refused("the peer failed authentication (wrong run secret)");
        }
        return session(secret, purpose, theirs, mine, false);
    }

    /** The accepting side's state: greeting out, the connector's answer in, then the proof out. */
    static final class Acceptor {
        private final RunSecret secret;
        private final String purpose;
        private final byte[] mine = nonce();
        private final byte[] theirs = new byte[NONCE];

        Acceptor(RunSecret secret, String purpose) {
            this.secret = secret;
            this.purpose = purpose;
        }

        ByteBuffer greeting() {
            return ByteBuffer.allocate(GREETING_BYTES).putInt(MAGIC).put(mine).flip();
        }

        /** Whether the first four bytes of an answer can start a Kindling peer's answer (checked early to drop garbage at once). */
        static boolean plausible(ByteBuffer answer) {
            return answer.position() < 4 || answer.getInt(0) == MAGIC;
        }

        /** Checks the connector's full answer ({@link #HELLO_BYTES}); returns the proof to send back. */
        ByteBuffer answer(ByteBuffer hello) throws Refused {
            if (hello.getInt(0) != MAGIC) {
                throw new Refused("not a Kindling peer (bad greeting)");
            }
            hello.get(4, theirs);
            byte[] proof = new byte[TAG];
            hello.get(4 + NONCE, proof);
            if (!MessageDigest.isEqual(proof, proof(secret, purpose + "/client", mine, theirs))) {
                throw new Refused("failed authentication (wrong or missing run secret)");
            }
            return ByteBuffer.wrap(proof(secret, purpose + "/server", theirs, mine));
        }

        /** The session after a successful {@link #answer}. */
        Session session() {
            return Handshake.session(secret, purpose, mine, theirs, true);
        }
    }

    /** Keys from the secret and both nonces, so every connection has its own and frames of one cannot be replayed on another. */
    private static Session session(RunSecret secret, String purpose, byte[] acceptorNonce, byte[] connectorNonce, boolean acceptor) {
        Mac m = secret.mac();
        m.update(("kindling-session/" + purpose).getBytes(StandardCharsets.UTF_8));
        m.update(acceptorNonce);
        m.update(connectorNonce);
        byte[] master = m.doFinal();
        Mac toAcceptor = hmac(direction(master, "connector->acceptor"));
        Mac toConnector = hmac(direction(master, "acceptor->connector"));
        return acceptor ? new Session(toConnector, toAcceptor) : new Session(toAcceptor, toConnector);
    }

    private static byte[] direction(byte[] master, String label) {
        Mac m = hmac(master);
        return m.doFinal(label.getBytes(StandardCharsets.UTF_8));
    }

    static Mac hmac(byte[] key) {
        try {
            Mac mac = Mac.getInstance("HmacSHA256");
            mac.init(new SecretKeySpec(key, "HmacSHA256"));
            return mac;
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException("HmacSHA256 is unavailable in this JVM", e);
        }
    }

    private static byte[] nonce() {
        byte[] b = new byte[NONCE];
        RANDOM.nextBytes(b);
        return b;
    }

    private static byte[] proof(RunSecret secret, String label, byte[] first, byte[] second) {
        Mac mac = secret.mac();
        mac.update(label.getBytes(StandardCharsets.UTF_8));
        mac.update(first);
        mac.update(second);
        return mac.doFinal();
    }
}
