package org.kindling.collective;

import java.time.Duration;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.logging.Handler;
import java.util.logging.Level;
import java.util.logging.LogRecord;
import java.util.logging.Logger;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/** Collects what Kindling logs (System.Logger goes to java.util.logging here) while it is open. */
public final class LogCapture extends Handler implements AutoCloseable {
    /** Held strongly: java.util.logging forgets a logger's level once nothing references it. */
    private final Logger logger = Logger.getLogger("org.kindling");
    private final Level level = logger.getLevel();
    private final List<LogRecord> records = new CopyOnWriteArrayList<>();

    public LogCapture() {
        logger.setLevel(Level.INFO);
        logger.addHandler(this);
    }

    @Override
    public void publish(LogRecord r) {
        records.add(r);
    }

    /** Every message so far, as "LEVEL message". */
    public List<String> lines() {
        return records.stream().map(r -> r.getLevel() + " " + r.getMessage()).toList();
    }

    /** Waits for a message matching {@code regex}; returns its match. */
    public Matcher await(String regex, Duration timeout) throws InterruptedException {
        Pattern p = Pattern.compile(regex);
        long deadline = System.nanoTime() + timeout.toNanos();
        while (System.nanoTime() < deadline) {
            for (LogRecord r : records) {
                Matcher m = p.matcher(r.getMessage());
                if (m.find()) {
                    return m;
                }
            }
            Thread.sleep(5);
        }
        throw new AssertionError("nothing matching " + regex + " was logged within " + timeout + ": " + lines());
    }

    @Override
    public void flush() {
        // records are kept as they come; nothing is buffered
    }

    @Override
    public void close() {
        logger.removeHandler(this);
        logger.setLevel(level);
    }
}
