package org.kindling.collective;

import java.io.Serializable;
import java.security.SecureRandom;
import javax.crypto.Mac;

/**
 * The per-run secret every connection of a run proves it holds. It travels to the workers inside
 * Spark's task closure, so it is a type of its own whose {@code toString} is redacted: a record or
 * an error that prints a plan holding it, and Spark's serialization debugger, never show the key.
 */
public final class RunSecret implements Serializable {
    private static final long serialVersionUID = 1L;
    private static final int BYTES = 32;
    private static final SecureRandom RANDOM = new SecureRandom();

    private final byte[] key;

    RunSecret(byte[] key) {
        if (key.length < 16) {
            throw new IllegalArgumentException("a run secret needs at least 16 bytes, got " + key.length);
        }
        this.key = key.clone();
    }

    /** A fresh random secret for one run. */
    public static RunSecret generate() {
        byte[] b = new byte[BYTES];
        RANDOM.nextBytes(b);
        return new RunSecret(b);
    }

    /** An HMAC-SHA256 keyed with this secret. */
    Mac mac() {
        return Handshake.hmac(key);
    }

    @Override
    public String toString() {
        return "RunSecret(redacted)";
    }
}
