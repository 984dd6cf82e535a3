package org.kindling.ops;

import java.lang.reflect.InvocationHandler;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Proxy;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;

/**
 * A complete {@link Backend} for a device whose memory the CPU cannot read, built from the
 * kernels that device has so far: every {@code Backend} method that {@code kernels} declares
 * (same name and parameter types, public) runs there, every default method of the interface runs
 * as written (so it reaches the device's kernels), and every other operation runs on the host:
 * each tensor argument on the device (alone, in a {@code List}, or inside a {@link Varlen}) is
 * mirrored to a host tensor, the host backend runs the call, and the mirrors are copied back.
 *
 * <p>Tensors that share one storage map to views of one host mirror at the same offsets, so an
 * output that aliases an input (softmax with {@code y == x}, {@code out == a}) behaves as on the
 * host. Every argument's elements are copied back, inputs included: a generic fallback cannot
 * tell outputs from inputs, and rewriting unchanged values is harmless; elements between the
 * arguments are neither read nor written. The host transfers go through the tensors' own
 * {@code copyFrom}/{@code to…Array}, that is through {@code kernels}' host copies, which
 * therefore every device must provide. Each operation that falls back is logged once, so a
 * device's missing kernels show in its log.
 */
public final class HostFallback implements InvocationHandler {
    private static final System.Logger LOG = System.getLogger(HostFallback.class.getName());

    private final Device device;
    private final Device host;
    private final Map<Method, Method> onDevice = new HashMap<>();
    private final Object kernels;
    private final Set<String> loggedFallbacks = ConcurrentHashMap.newKeySet();

    private HostFallback(Device device, Object kernels, Device host) {
        this.device = device;
        this.host = host;
        for (Method m : Backend.class.getMethods()) {
            try {
                Method k = kernels.getClass().getMethod(m.getName(), m.getParameterTypes());
                if (k.getReturnType() != m.getReturnType()) {
                    throw new IllegalArgumentException(kernels.getClass().getName() + "." + m.getName()
                            + " returns " + k.getReturnType() + " where Backend's returns " + m.getReturnType());
                }
                // The kernels' class may be package-private in its own module; its public methods are the contract.
                k.setAccessible(true);
                onDevice.put(m, k);
            } catch (NoSuchMethodException absent) {
                // runs as the interface's default method or on the host
            }
        }
        this.kernels = kernels;
        require("name");
        require("gemmImpl");
        // The fallback moves data through these, so they cannot fall back themselves.
        require("copyFromHost", Tensor.class, float[].class);
        require("copyFromHost", Tensor.class, int[].class);
        require("copyToHost", float[].class, Tensor.class);
        require("copyToHost", int[].class, Tensor.class);
    }

    private void require(String name, Class<?>... parameters) {
        try {
            if (!onDevice.containsKey(Backend.class.getMethod(name, parameters))) {
                throw new IllegalArgumentException(kernels.getClass().getName() + " must provide Backend." + name
                        + List.of(parameters).stream().map(Class::getSimpleName).toList()
                        + ": every device has its own name and host copies");
            }
        } catch (NoSuchMethodException e) {
            throw new IllegalStateException(e);
        }
    }

    /**
     * The backend of {@code device}: {@code kernels}' methods where it has them, {@code host}'s
     * backend (a CPU device the caller owns and closes) for the rest.
     *
     * @throws IllegalArgumentException if {@code kernels} lacks {@code name()}, {@code gemmImpl()} or a host copy
     */
    public static Backend backend(Device device, Object kernels, Device host) {
        return (Backend) Proxy.newProxyInstance(Backend.class.getClassLoader(), new Class<?>[] {Backend.class},
                new HostFallback(device, kernels, host));
    }

    /** Whether {@code backend} is one this class made and runs {@code op} on the host (for tests and logs). */
    public static boolean fallsBack(Backend backend, String op) {
        if (!Proxy.isProxyClass(backend.getClass()) || !(Proxy.getInvocationHandler(backend) instanceof HostFallback f)) {
            return false;
        }
        for (Method m : Backend.class.getMethods()) {
            if (m.getName().equals(op) && !m.isDefault() && !f.onDevice.containsKey(m)) {
                return true;
            }
        }
        return false;
    }

    @Override
    public Object invoke(Object proxy, Method method, Object[] args) throws Throwable {
        if (method.getDeclaringClass() == Object.class) {
            return switch (method.getName()) {
                case "toString" -> "HostFallback[" + device + ", " + kernels.getClass().getSimpleName() + "]";
                case "hashCode" -> System.identityHashCode(proxy);
                case "equals" -> proxy == args[0];
                default -> throw new UnsupportedOperationException(method.getName());
            };
        }
        Method k = onDevice.get(method);
        try {
            if (k != null) {
                return k.invoke(kernels, args);
            }
            if (method.isDefault()) {
                return InvocationHandler.invokeDefault(proxy, method, args);
            }
        } catch (InvocationTargetException e) {
            throw e.getCause();
        }
        if (loggedFallbacks.add(method.getName())) {
            LOG.log(System.Logger.Level.INFO, device + " has no kernel for " + method.getName()
                    + ": it runs on the host (operands copied to the CPU and back)");
        }
        return onHost(method, args);
    }

    private Object onHost(Method method, Object[] args) throws Throwable {
        Mirrors mirrors = new Mirrors();
        try {
            for (Object a : args) {
                mirrors.collect(a);
            }
            mirrors.upload();
            Object[] hostArgs = new Object[args.length];
            for (int i = 0; i < args.length; i++) {
                hostArgs[i] = mirrors.map(args[i]);
            }
            Object result;
            try {
                result = method.invoke(host.backend(), hostArgs);
            } catch (InvocationTargetException e) {
                throw e.getCause();
            }
            mirrors.download();
            return result;
        } finally {
            mirrors.close();
        }
    }

    /** BF16 widens to float and narrows back exactly, so every dtype round-trips bit for bit. */
    private static void copy(Tensor dst, Tensor src) {
        if (src.dtype() == DType.I32) {
            dst.copyFrom(src.toIntArray());
        } else {
            dst.copyFrom(src.toFloatArray());
        }
    }

    /**
     * One host copy per device storage the arguments touch, spanning every tensor on it. Only the
     * elements the arguments cover move, in merged runs: another thread may be writing the gaps
     * between them (the gradient sync filling another group of a flat gradient buffer).
     */
    private final class Mirrors {
        private final Map<Storage, Span> spans = new IdentityHashMap<>();

        private final class Span {
            final Storage storage;
            final List<int[]> ranges = new ArrayList<>();
            int lo;
            Tensor mirror;

            Span(Storage storage) {
                this.storage = storage;
            }

            /** The ranges sorted and merged where they overlap or touch. */
            List<int[]> runs() {
                ranges.sort((a, b) -> Integer.compare(a[0], b[0]));
                List<int[]> runs = new ArrayList<>();
                for (int[] r : ranges) {
                    int[] last = runs.isEmpty() ? null : runs.get(runs.size() - 1);
                    if (last != null && r[0] <= last[1]) {
                        last[1] = Math.max(last[1], r[1]);
                    } else {
                        runs.add(r.clone());
                    }
                }
                return runs;
            }

            Tensor onDevice(int[] run) {
                return new Tensor(device, storage, run[0], new int[] {run[1] - run[0]}, false);
            }

            Tensor onHost(int[] run) {
                return mirror.view(run[0] - lo, run[1] - run[0]);
            }
        }

        void collect(Object a) {
            if (a instanceof Tensor t) {
                if (t.device().base() == device) {
                    spans.computeIfAbsent(t.storage(), Span::new).ranges.add(new int[] {t.offset(), t.offset() + t.numel()});
                }
            } else if (a instanceof Varlen v) {
                collect(v.device());
            } else if (a instanceof List<?> list) {
                for (Object o : list) {
                    collect(o);
                }
            }
        }

        void upload() {
            for (Span s : spans.values()) {
                List<int[]> runs = s.runs();
                s.lo = runs.get(0)[0];
                s.mirror = host.allocate(s.storage.dtype(), runs.get(runs.size() - 1)[1] - s.lo);
                for (int[] run : runs) {
                    copy(s.onHost(run), s.onDevice(run));
                }
            }
        }

        Object map(Object a) {
            if (a instanceof Tensor t) {
                if (t.device().base() != device) {
                    return t;
                }
                Span s = spans.get(t.storage());
                return s.mirror.view(t.offset() - s.lo, t.shape());
            }
            if (a instanceof Varlen v) {
                return v.device().device().base() == device ? Varlen.of((Tensor) map(v.device()), v.host()) : v;
            }
            if (a instanceof List<?> list) {
                List<Object> out = new ArrayList<>(list.size());
                for (Object o : list) {
                    out.add(map(o));
                }
                return out;
            }
            return a;
        }

        void download() {
            for (Span s : spans.values()) {
                for (int[] run : s.runs()) {
                    copy(s.onDevice(run), s.onHost(run));
                }
            }
        }

        void close() {
            for (Span s : spans.values()) {
                if (s.mirror != null) {
                    s.mirror.close();
                }
            }
        }
    }
}
