package org.kindling.train;

import com.google.protobuf.CodedOutputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.net.InetAddress;
import java.net.UnknownHostException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.zip.CRC32C;
import org.kindling.models.train.StepResult;

/**
 * A run's steps as TensorBoard scalars: {@code RUN/tb/events.out.tfevents.SECONDS.HOST.PID.N}, one file per driver attempt
 * (TensorBoard merges the files of a directory). Each step gets a scalar per metrics.jsonl field, tagged
 * {@code train/NAME} (the field's name there: {@code train/loss}, {@code train/grad_norm}, {@code train/moe_balance_loss}, …).
 *
 * <p>The file is TFRecord framing around serialized {@code tensorflow.Event} protos (encoded with protobuf-java,
 * which comes with Spark): first the {@code file_version} event, then one summary event per step. Like metrics.jsonl it
 * is written whole once, then appended to; a retried stage that rewinds, a failed write or a file system that cannot
 * append (S3A) rewrites it whole. A failed write is logged and retried at the next flush: it never stops training.
 */
final class TensorBoardEvents {
    static final String DIR = "tb";
    static final String FILE_VERSION = "brain.Event:2";
    /** TensorBoard's mask over a record's CRC32C: a CRC of data that holds CRCs stays informative. */
    private static final int MASK_DELTA = 0xa282ead8;

    private final StepFile out;
    private final byte[] header;
    /** Each step's framed event, encoded when the step arrived (its wall time). */
    private static final AtomicInteger FILES = new AtomicInteger();
    private final TreeMap<Integer, byte[]> records = new TreeMap<>();

    TensorBoardEvents(HadoopRunStorage storage, long startMillis, String host) {
        // TensorFlow's own suffix: seconds, host, then process and a counter, so two drivers on one host
        // in the same second (a run resumed at once) keep their files apart.
        String suffix = (startMillis / 1000) + "." + host.replaceAll("[^A-Za-z0-9-]", "_") + "." + ProcessHandle.current().pid() + "."
                + FILES.getAndIncrement();
        // TensorBoard reads every file whose name holds "tfevents": the temporary file of a rewrite must not.
        this.out = new StepFile(storage, DIR + "/events.out.tfevents." + suffix, DIR + "/.rewrite." + suffix, false);
        this.header = record(event(startMillis / 1000.0, 0, FILE_VERSION, null));
    }

    /** This machine's name for the events file (TensorBoard shows none of it; it keeps two drivers' files apart). */
    static String host() {
        try {
            return InetAddress.getLocalHost().getHostName();
        } catch (UnknownHostException e) {
            return "localhost";
        }
    }

    /** The events file, relative to the run directory. */
    String file() {
        return out.file();
    }

    synchronized void accept(StepResult r) {
        out.arrived(r.step());
        records.tailMap(r.step(), true).clear();
        records.put(r.step(), record(event(System.currentTimeMillis() / 1000.0, r.step(), null, scalars(r))));
    }

    /** The scalars of step {@code r}, by tag: metrics.jsonl's fields after {@code step}, in its order. */
    static Map<String, Double> scalars(StepResult r) {
        Map<String, Double> out = new LinkedHashMap<>();
        out.put("train/loss", r.loss());
        out.put("train/lr", r.lr());
        out.put("train/grad_norm", r.gradNorm());
        out.put("train/tokens_per_s", r.tokensPerSecond());
        r.metrics().forEach((name, value) -> out.put("train/" + name, value));
        return out;
    }

    /** Brings the events file up to date with what has arrived; a failure is logged, never thrown. */
    synchronized void flush() {
        out.flush(records.isEmpty() ? 0 : records.lastKey(), new StepFile.Contents() {
            @Override
            public byte[] after(int step) {
                return concat(null, records.tailMap(step, false).values());
            }

            @Override
            public byte[] whole() {
                return concat(header, records.values());
            }
        });
    }

    private static byte[] concat(byte[] first, Iterable<byte[]> rest) {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        if (first != null) {
            bytes.writeBytes(first);
        }
        rest.forEach(bytes::writeBytes);
        return bytes.toByteArray();
    }

    /**
     * A serialized {@code tensorflow.Event}: wall_time (1), step (2), then either file_version (3) or a summary (5)
     * whose values (1) each hold a tag (1) and a simple_value (2).
     */
    static byte[] event(double wallTime, long step, String fileVersion, Map<String, Double> scalars) {
        try {
            ByteArrayOutputStream bytes = new ByteArrayOutputStream();
            CodedOutputStream event = CodedOutputStream.newInstance(bytes);
            event.writeDouble(1, wallTime);
            if (fileVersion != null) {
                event.writeString(3, fileVersion);
            } else {
                event.writeInt64(2, step);
                ByteArrayOutputStream summaryBytes = new ByteArrayOutputStream();
                CodedOutputStream summary = CodedOutputStream.newInstance(summaryBytes);
                for (Map.Entry<String, Double> e : scalars.entrySet()) {
                    float v = e.getValue().floatValue();
                    summary.writeTag(1, 2);
                    summary.writeUInt32NoTag(CodedOutputStream.computeStringSize(1, e.getKey()) + CodedOutputStream.computeFloatSize(2, v));
                    summary.writeString(1, e.getKey());
                    summary.writeFloat(2, v);
                }
                summary.flush();
                event.writeByteArray(5, summaryBytes.toByteArray());
            }
            event.flush();
            return bytes.toByteArray();
        } catch (IOException e) {
            throw new IllegalStateException("a byte array stream cannot fail", e);
        }
    }

    /** A TFRecord: length (uint64 LE), its masked CRC32C (uint32 LE), the data, the data's masked CRC32C. */
    static byte[] record(byte[] data) {
        ByteBuffer b = ByteBuffer.allocate(8 + 4 + data.length + 4).order(ByteOrder.LITTLE_ENDIAN);
        b.putLong(data.length);
        b.putInt(maskedCrc(b.array(), 0, 8));
        b.put(data);
        b.putInt(maskedCrc(data, 0, data.length));
        return b.array();
    }

    static int maskedCrc(byte[] data, int offset, int length) {
        CRC32C crc = new CRC32C();
        crc.update(data, offset, length);
        int c = (int) crc.getValue();
        return ((c >>> 15) | (c << 17)) + MASK_DELTA;
    }
}
