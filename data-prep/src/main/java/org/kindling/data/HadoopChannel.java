package org.kindling.data;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.NonWritableChannelException;
import java.nio.channels.SeekableByteChannel;
import org.apache.hadoop.fs.FSDataInputStream;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;

/** A read-only {@link SeekableByteChannel} over a Hadoop file, which Arrow's file reader needs. */
final class HadoopChannel implements SeekableByteChannel {
    private final FSDataInputStream in;
    private final long size;
    private final byte[] buffer = new byte[1 << 16];
    private boolean open = true;

    HadoopChannel(FileSystem fs, Path path) throws IOException {
        this.size = fs.getFileStatus(path).getLen();
        this.in = fs.open(path);
    }

    @Override
    public int read(ByteBuffer dst) throws IOException {
        if (position() >= size) {
            return -1;
        }
        int total = 0;
        while (dst.hasRemaining()) {
            int n = in.read(buffer, 0, Math.min(buffer.length, dst.remaining()));
            if (n < 0) {
                break;
            }
            dst.put(buffer, 0, n);
            total += n;
        }
        return total == 0 ? -1 : total;
    }

    @Override
    public int write(ByteBuffer src) {
        throw new NonWritableChannelException();
    }

    @Override
    public long position() throws IOException {
        return in.getPos();
    }

    @Override
    public SeekableByteChannel position(long newPosition) throws IOException {
        in.seek(newPosition);
        return this;
    }

    @Override
    public long size() {
        return size;
    }

    @Override
    public SeekableByteChannel truncate(long size) {
        throw new NonWritableChannelException();
    }

    @Override
    public boolean isOpen() {
        return open;
    }

    @Override
    public void close() throws IOException {
        open = false;
        in.close();
    }
}
