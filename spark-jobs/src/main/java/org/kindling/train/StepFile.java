package org.kindling.train;

import java.io.IOException;
import java.io.OutputStream;

/**
 * A run file that follows the run's steps ({@code metrics.jsonl}, TensorBoard events): written whole
 * once, then appended to with the steps after the newest one written, so a run writes each step about
 * once. A rewind (a retried stage re-sending steps already written), a failed write or a file system
 * that cannot append (S3A) makes the next flush rewrite it whole through a temporary file. A failure is
 * logged, never thrown: files that follow training never stop it.
 */
final class StepFile {
    private static final System.Logger LOG = System.getLogger(StepFile.class.getName());

    /** A file's bytes: the steps after a given one (to append), or the whole file. */
    interface Contents {
        byte[] after(int step);

        byte[] whole();
    }

    private final HadoopRunStorage storage;
    private final String file;
    private final String temporary;
    private final boolean checksum;
    /** The newest step in the file (0: none yet). */
    private int written;
    /** Whether the file must be rewritten whole: before the first write, after a rewind or a failed write. */
    private boolean rewrite = true;
    private boolean appendable = true;

    /** {@code checksum}: whether Hadoop's checksum file may sit beside it (TensorBoard reads every file named like its own). */
    StepFile(HadoopRunStorage storage, String file, String temporary, boolean checksum) {
        this.storage = storage;
        this.file = file;
        this.temporary = temporary;
        this.checksum = checksum;
    }

    String file() {
        return file;
    }

    /** Step {@code step} arrives (again, when a retried stage rewinds): one already written makes the next flush rewrite. */
    void arrived(int step) {
        if (step <= written) {
            rewrite = true;
        }
    }

    /** Brings the file up to step {@code newest} (0: none has arrived). */
    void flush(int newest, Contents contents) {
        if (newest == 0 || (!rewrite && newest == written)) {
            return;
        }
        if (!rewrite && appendable) {
            try (OutputStream out = storage.append(file)) {
                out.write(contents.after(written));
                written = newest;
                return;
            } catch (UnsupportedOperationException e) {
                appendable = false;
            } catch (IOException | RuntimeException e) {
                // A partial append is repaired by the rewrite below, or by the next flush's.
                LOG.log(System.Logger.Level.WARNING, "cannot append to " + storage.describe(file) + ": " + e.getMessage()
                        + "; rewriting it");
            }
        }
        rewrite = true;
        try {
            try (OutputStream out = checksum ? storage.create(temporary) : storage.createWithoutChecksum(temporary)) {
                out.write(contents.whole());
            }
            storage.replace(temporary, file);
            written = newest;
            rewrite = false;
        } catch (IOException | RuntimeException e) {
            LOG.log(System.Logger.Level.WARNING, "cannot write " + storage.describe(file) + ": " + e.getMessage()
                    + "; training goes on and the next log interval tries again");
        }
    }
}
