package org.kindling.train;

import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.util.ArrayList;
import java.util.List;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileContext;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.LocalFileSystem;
import org.apache.hadoop.fs.Options;
import org.apache.hadoop.fs.Path;
import org.kindling.models.io.RunStorage;

/**
 * A run directory on any Hadoop file system (HDFS, S3A, file:). Directory renames are atomic on
 * HDFS; {@link #replace} uses FileContext's overwriting rename, which HDFS also performs atomically.
 */
public final class HadoopRunStorage implements RunStorage {
    private final FileSystem fs;
    private final FileContext fc;
    private final Path root;

    public HadoopRunStorage(String root, Configuration conf) throws IOException {
        Path p = new Path(root);
        this.fs = p.getFileSystem(conf);
        this.root = fs.makeQualified(p);
        this.fc = FileContext.getFileContext(this.root.toUri(), conf);
    }

    /** The run directory, fully qualified. */
    public String root() {
        return root.toString();
    }

    private Path resolve(String path) {
        if (path.startsWith("/") || path.contains("..")) {
            throw new IllegalArgumentException("path " + path + " leaves the run directory " + root);
        }
        return new Path(root, path);
    }

    @Override
    public OutputStream create(String path) throws IOException {
        return fs.create(resolve(path), true);
    }

    /**
     * Creates a file that readers other than Hadoop's will list: on {@code file:} without the {@code .NAME.crc} file
     * beside it (TensorBoard reads every file whose name holds "tfevents", checksum files included).
     */
    public OutputStream createWithoutChecksum(String path) throws IOException {
        Path p = resolve(path);
        if (fs instanceof LocalFileSystem local) {
            local.delete(local.getChecksumFile(p), false);
            return local.getRawFileSystem().create(p, true);
        }
        return fs.create(p, true);
    }

    /**
     * Appends to an existing file.
     *
     * @throws UnsupportedOperationException where the file system cannot append (S3A, for one)
     */
    public OutputStream append(String path) throws IOException {
        Path p = resolve(path);
        if (fs instanceof LocalFileSystem local) {
            // file: checksums whole files and cannot append; the raw file can, and once its stale checksum file is gone
            // reads skip verification.
            local.delete(local.getChecksumFile(p), false);
            return local.getRawFileSystem().append(p);
        }
        return fs.append(p);
    }

    @Override
    public InputStream open(String path) throws IOException {
        return fs.open(resolve(path));
    }

    @Override
    public boolean exists(String path) throws IOException {
        return fs.exists(resolve(path));
    }

    @Override
    public void rename(String from, String to) throws IOException {
        Path target = resolve(to);
        fs.mkdirs(target.getParent());
        if (fs.exists(target)) {
            throw new IOException("cannot rename " + resolve(from) + ": " + target + " exists");
        }
        if (!fs.rename(resolve(from), target)) {
            throw new IOException("cannot rename " + resolve(from) + " to " + target);
        }
    }

    @Override
    public void replace(String from, String to) throws IOException {
        fc.rename(resolve(from), resolve(to), Options.Rename.OVERWRITE);
    }

    @Override
    public void delete(String path) throws IOException {
        fs.delete(resolve(path), true);
    }

    @Override
    public List<String> list(String dir) throws IOException {
        List<String> out = new ArrayList<>();
        Path p = resolve(dir);
        if (!fs.exists(p)) {
            return out;
        }
        for (FileStatus s : fs.listStatus(p)) {
            out.add(s.getPath().getName());
        }
        out.sort(null);
        return out;
    }

    @Override
    public String describe(String path) {
        return resolve(path).toString();
    }
}
