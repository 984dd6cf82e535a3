package org.kindling.models;

import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;

/**
 * All parameters of a model in two flat buffers (weights and gradients), in declaration order.
 * Layers declare their parameters on a {@link Builder}; {@link Builder#build} allocates once and
 * initializes from one seeded stream, so a model's weights depend only on its config and seed.
 */
public final class Params implements AutoCloseable {
    /** How a parameter starts. */
    public enum Init { ZEROS, ONES, NORMAL }

    private record Spec(String name, int[] shape, Init init, double std, boolean decay) {
    }

    /** Collects parameter declarations; handles become usable after {@link #build}. */
    public static final class Builder {
        private final List<Spec> specs = new ArrayList<>();
        private final List<Handle> handles = new ArrayList<>();

        public Handle add(String name, Init init, double std, boolean decay, int... shape) {
            for (Spec s : specs) {
                if (s.name().equals(name)) {
                    throw new IllegalArgumentException("parameter " + name + " declared twice");
                }
            }
            specs.add(new Spec(name, shape.clone(), init, std, decay));
            Handle h = new Handle(name);
            handles.add(h);
            return h;
        }

        /** Allocates the buffers on {@code dev} and fills them from {@code seed}. */
        public Params build(Device dev, long seed) {
            // Sizes and offsets are summed in longs, so an oversized model is reported rather than overflowing.
            long total = 0;
            for (Spec s : specs) {
                total += numel(s.shape());
            }
            if (total > Integer.MAX_VALUE) {
                throw new IllegalArgumentException("model has " + total + " parameters; one device tensor, and so the flat "
                        + "parameter buffer, holds at most 2^31-1 elements");
            }
            Tensor values = dev.allocate(DType.F32, (int) total);
            Tensor grads = dev.allocate(DType.F32, (int) total);
            float[] host = new float[(int) total];
            SplittableRandom rnd = new SplittableRandom(seed);
            // Decayed parameters first, so AdamW runs as two flat calls (with and without weight decay).
            long[] offsets = new long[specs.size()];
            long off = 0;
            long decayed = 0;
            for (boolean decay : new boolean[] {true, false}) {
                for (int i = 0; i < specs.size(); i++) {
                    if (specs.get(i).decay() == decay) {
                        offsets[i] = off;
                        off += numel(specs.get(i).shape());
                    }
                }
                if (decay) {
                    decayed = off;
                }
            }
            Map<String, Param> byName = new LinkedHashMap<>();
            for (int i = 0; i < specs.size(); i++) {
                Spec s = specs.get(i);
                int n = Tensor.numel(s.shape());
                for (int j = 0; j < n; j++) {
                    host[(int) offsets[i] + j] = switch (s.init()) {
                        case ZEROS -> 0f;
                        case ONES -> 1f;
                        case NORMAL -> (float) (gaussian(rnd) * s.std());
                    };
                }
                Param p = new Param(s.name(), values.view((int) offsets[i], s.shape()), grads.view((int) offsets[i], s.shape()),
                        s.decay());
                byName.put(s.name(), p);
                handles.get(i).param = p;
            }
            values.copyFrom(host);
            return new Params(values, grads, byName, (int) decayed);
        }

        /** Elements of a shape, in a long: a single parameter may exceed 2^31-1 elements, which build() then reports. */
        private static long numel(int[] shape) {
            long n = 1;
            for (int d : shape) {
                n *= d;
            }
            return n;
        }

        private static double gaussian(SplittableRandom r) {
            double u = 1 - r.nextDouble();
            return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * r.nextDouble());
        }
    }

    /** A layer's reference to its parameter, resolved when the buffers are built. */
    public static final class Handle {
        private final String name;
        private Param param;

        private Handle(String name) {
            this.name = name;
        }

        public Param get() {
            if (param == null) {
                throw new IllegalStateException("parameter " + name + " used before the model's parameters were built");
            }
            return param;
        }

        public Tensor value() {
            return get().value();
        }

        public Tensor grad() {
            return get().grad();
        }
    }

    private final Tensor values;
    private final Tensor grads;
    private final Map<String, Param> byName;
    private final int decayed;

    private Params(Tensor values, Tensor grads, Map<String, Param> byName, int decayed) {
        this.values = values;
        this.grads = grads;
        this.byName = byName;
        this.decayed = decayed;
    }

    /** Elements at the front of the flat buffers that AdamW decays; the rest (biases, norms) it does not. */
    public int decayed() {
        return decayed;
    }

    /** Every weight, flat: the decayed parameters first, each group in declaration order. */
    public Tensor values() {
        return values;
    }

    /** Every gradient, flat, aligned with {@link #values}. */
    public Tensor grads() {
        return grads;
    }

    public List<Param> list() {
        return Collections.unmodifiableList(new ArrayList<>(byName.values()));
    }

    public Param get(String name) {
        Param p = byName.get(name);
        if (p == null) {
            throw new IllegalArgumentException("no parameter named " + name);
        }
        return p;
    }

    public int count() {
        return values.numel();
    }

    public void zeroGrad() {
        grads.device().backend().fill(grads, 0f);
    }

    @Override
    public void close() {
        values.close();
        grads.close();
    }
}
