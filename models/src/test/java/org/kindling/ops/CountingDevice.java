package org.kindling.ops;

import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Proxy;
import org.kindling.ops.cpu.CpuDevice;

/**
 * A CPU device that counts the copies to the host made by callers of its backend (not those a
 * kernel makes inside the backend): what a GPU would pay as synchronising read-backs.
 */
public final class CountingDevice extends Device {
    private final CpuDevice cpu;
    private final Backend backend;
    private final ThreadLocal<int[]> depth = ThreadLocal.withInitial(() -> new int[1]);
    private int readBacks;

    public CountingDevice(int threads) {
        cpu = CpuDevice.open(threads);
        Backend inner = cpu.backend();
        backend = (Backend) Proxy.newProxyInstance(Backend.class.getClassLoader(), new Class<?>[] {Backend.class}, (proxy, m, args) -> {
            int[] d = depth.get();
            if (m.getName().equals("copyToHost") && d[0] == 0) {
                synchronized (this) {
                    readBacks++;
                }
            }
            d[0]++;
            try {
                return m.invoke(inner, args);
            } catch (InvocationTargetException e) {
                throw e.getCause();
            } finally {
                d[0]--;
            }
        });
    }

    /** Copies to the host made outside the backend since the last call. */
    public synchronized int takeReadBacks() {
        int n = readBacks;
        readBacks = 0;
        return n;
    }

    @Override
    public Kind kind() {
        return Kind.CPU;
    }

    @Override
    public int ordinal() {
        return 0;
    }

    @Override
    public Backend backend() {
        return backend;
    }

    @Override
    public int threads() {
        return cpu.threads();
    }

    @Override
    public Fence fence() {
        return cpu.fence();
    }

    @Override
    protected Storage newStorage(DType dtype, int length) {
        return ((Device) cpu).newStorage(dtype, length);
    }

    @Override
    protected void shutdown() {
        cpu.close();
    }
}
