package org.kindling.models.io;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.util.List;

/**
 * The file operations a run directory needs, relative to its root. Local files here; the Spark
 * jobs back it with the Hadoop FileSystem (HDFS, S3A, …) without {@code models} depending on it.
 */
public interface RunStorage {
    /** A new file (parents created), replacing any file of that name. */
    OutputStream create(String path) throws IOException;

    InputStream open(String path) throws IOException;

    boolean exists(String path) throws IOException;

    /** Renames a file or directory; {@code to} must not exist. Atomic where the file system allows. */
    void rename(String from, String to) throws IOException;

    /** Replaces {@code to} by {@code from} (a file), atomically where the file system allows. */
    void replace(String from, String to) throws IOException;

    /** Deletes a file or a directory tree; missing is fine. */
    void delete(String path) throws IOException;

    /** Names of the entries of a directory; empty when it does not exist. */
    List<String> list(String dir) throws IOException;

    /** The full location of a path, for messages. */
    String describe(String path);
}
