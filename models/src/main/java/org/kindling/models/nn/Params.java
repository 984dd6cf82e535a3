package org.kindling.models.nn;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import org.kindling.ops.DType;
import org.kindling.ops.Device;
import org.kindling.ops.Tensor;

/**
 * All tensors of a model: the trainable parameters in two flat buffers (weights and gradients),
 * laid out by {@link ParamGroup} so the optimizer runs one call per group, and the fixed tensors
 * (no gradient, saved in checkpoints) in a third. Layers declare them on a {@link Builder};
 * {@link Builder#build} allocates once and initialises every tensor from one seeded stream in
 * declaration order, so a model's weights depend only on its config and seed.
 */
public final class Params implements AutoCloseable {

    private record Spec(String name, int[] shape, Init init, ParamGroup group) {
        boolean trainable() {
            return group != null;
        }
    }

    /**
     * A run of the flat buffers whose parameters share a group.
     *
     * @param offset first element
     * @param length elements
     */
    public record Segment(ParamGroup group, int offset, int length) {
    }

    /** Collects declarations; handles become usable after {@link #build}. */
    public static final class Builder {
        private final List<Spec> specs = new ArrayList<>();
        private final List<Handle> handles = new ArrayList<>();
        private final List<GemmInput> gemmInputs = new ArrayList<>();

        /** A trainable parameter. */
        public Handle add(String name, Init init, ParamGroup group, int... shape) {
            if (group == null) {
                throw new IllegalArgumentException("parameter " + name + " needs a group");
            }
            return declare(new Spec(name, shape.clone(), init, group));
        }

        /** A fixed tensor: no gradient, never updated by the optimizer, saved and restored with the weights. */
        public Handle fixed(String name, Init init, int... shape) {
            return declare(new Spec(name, shape.clone(), init, null));
        }

        private Handle declare(Spec spec) {
            for (Spec s : specs) {
                if (s.name().equals(spec.name())) {
                    throw new IllegalArgumentException("parameter " + spec.name() + " declared twice");
                }
            }
            specs.add(spec);
            Handle h = new Handle(spec.name());
            handles.add(h);
            return h;
        }

        /** A layer's GEMM operand buffer (see {@link GemmInput}), freed with the parameters. */
        public GemmInput gemmInput(String name) {
            GemmInput g = new GemmInput(name);
            gemmInputs.add(g);
            return g;
        }

        /** Every tensor declared so far (trainable and fixed), by name in declaration order: its shape. */
        public Map<String, List<Integer>> shapes() {
            Map<String, List<Integer>> out = new LinkedHashMap<>();
            for (Spec s : specs) {
                out.put(s.name(), Arrays.stream(s.shape()).boxed().toList());
            }
            return out;
        }

        /**
         * Names of the tensors declared so far in the order a built model lists them: the
         * trainable ones as {@link Params#list}, then the fixed ones as {@link Params#fixed}.
         */
        public List<String> order() {
            List<String> out = trainableOrder();
            for (Spec s : specs) {
                if (!s.trainable()) {
                    out.add(s.name());
                }
            }
            return out;
        }

        /** Names of the trainable parameters declared so far, as {@link Params#list} orders them. */
        public List<String> trainableOrder() {
            List<String> out = new ArrayList<>();
            for (Spec s : specs) {
                if (s.trainable()) {
                    out.add(s.name());
                }
            }
            return out;
        }

        /**
         * Each declared tensor's initial values as {@link #build} draws them from {@code seed}: one
         * tensor at a time in declaration order, handed to {@code each} when {@code wanted} accepts
         * its name (the others are drawn and dropped, so the stream stays the same). A part of a
         * model gets the whole model's values with the memory of its largest tensor.
         */
        public void initialValues(long seed, java.util.function.Predicate<String> wanted,
                                  java.util.function.BiConsumer<String, float[]> each) {
            SplittableRandom rnd = new SplittableRandom(seed);
            for (Spec s : specs) {
                long n = numel(s.shape());
                if (n > Integer.MAX_VALUE) {
                    throw new IllegalArgumentException("parameter " + s.name() + " has " + n + " elements; one tensor holds at "
                            + "most 2^31-1");
                }
                float[] v = new float[(int) n];
                s.init().fill(v, 0, s.shape(), rnd);
                if (wanted.test(s.name())) {
                    each.accept(s.name(), v);
                }
            }
        }

        /** Trainable elements declared so far. */
        public long trainableCount() {
            long n = 0;
            for (Spec s : specs) {
                n += s.trainable() ? numel(s.shape()) : 0;
            }
            return n;
        }

        /** Allocates the buffers on {@code dev} and fills them from {@code seed}. */
        public Params build(Device dev, long seed) {
            // Groups in order: decayed matrices first (the layout the first models had), then others as declared.
            List<ParamGroup> groups = new ArrayList<>();
            groups.add(ParamGroup.DECAY);
            for (Spec s : specs) {
                if (s.trainable() && !groups.contains(s.group())) {
                    groups.add(s.group());
                }
            }
            long[] offsets = new long[specs.size()];
            List<Segment> segments = new ArrayList<>();
            long off = 0;
            for (ParamGroup g : groups) {
                long start = off;
                for (int i = 0; i < specs.size(); i++) {
                    if (g.equals(specs.get(i).group())) {
                        offsets[i] = off;
                        off += numel(specs.get(i).shape());
                    }
                }
                if (off > start) {
                    segments.add(new Segment(g, (int) Math.min(start, Integer.MAX_VALUE), (int) Math.min(off - start, Integer.MAX_VALUE)));
                }
            }
            long fixedTotal = 0;
            for (int i = 0; i < specs.size(); i++) {
                if (!specs.get(i).trainable()) {
                    offsets[i] = fixedTotal;
                    fixedTotal += numel(specs.get(i).shape());
                }
            }
            // Sizes are summed in longs, so an oversized model is reported rather than overflowing.
            if (off > Integer.MAX_VALUE || fixedTotal > Integer.MAX_VALUE) {
                throw new IllegalArgumentException("model has " + off + " parameters and " + fixedTotal + " fixed values; one "
                        + "device tensor, and so each flat buffer, holds at most 2^31-1 elements");
            }
            Tensor values = dev.allocate(DType.F32, (int) off);
            Tensor grads = dev.allocate(DType.F32, (int) off);
            Tensor fixed = dev.allocate(DType.F32, (int) fixedTotal);
            float[] host = new float[(int) off];
            float[] fixedHost = new float[(int) fixedTotal];
            SplittableRandom rnd = new SplittableRandom(seed);
            Map<String, Param> trainable = new LinkedHashMap<>();
            Map<String, Param> constant = new LinkedHashMap<>();
            for (int i = 0; i < specs.size(); i++) {
                Spec s = specs.get(i);
                int o = (int) offsets[i];
                Param p;
                if (s.trainable()) {
                    s.init().fill(host, o, s.shape(), rnd);
                    p = new Param(s.name(), values.view(o, s.shape()), grads.view(o, s.shape()), s.group());
                    trainable.put(s.name(), p);
                } else {
                    s.init().fill(fixedHost, o, s.shape(), rnd);
                    p = new Param(s.name(), fixed.view(o, s.shape()), null, null);
                    constant.put(s.name(), p);
                }
                handles.get(i).param = p;
            }
            values.copyFrom(host);
            fixed.copyFrom(fixedHost);
            return new Params(values, grads, fixed, trainable, constant, List.copyOf(segments), List.copyOf(handles),
                    List.copyOf(gemmInputs));
        }

        /** Elements of a shape, in a long: a single parameter may exceed 2^31-1 elements, which build() then reports. */
        private static long numel(int[] shape) {
            long n = 1;
            for (int d : shape) {
                n *= d;
            }
            return n;
        }
    }

    /** A layer's reference to its tensor, resolved when the buffers are built. */
    public static final class Handle {
        private final String name;
        private Param param;
        /** The bf16 shadow of a trainable weight under {@link Precision#BF16}; null under fp32. */
        private Tensor shadow;

        private Params owner;

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

        /** The weight as a GEMM operand: its bf16 shadow under {@link Precision#BF16}, else the fp32 value. */
        public Tensor gemmWeight() {
            return shadow != null ? shadow : value();
        }

        /** The gradient (its place in the sink while gradients are discarded); an error for a fixed tensor. */
        public Tensor grad() {
            Tensor g = get().grad();
            if (g == null) {
                throw new IllegalStateException(name + " is a fixed tensor: it has no gradient");
            }
            return discarded() ? owner.sinkOf(g) : g;
        }

        /**
         * Whether gradients are being discarded ({@link Params#discardGradients}): a layer may then skip
         * the work that only forms parameter gradients (a Linear's dW GEMM); what it writes anyway lands in the sink.
         */
        public boolean discarded() {
            return owner != null && owner.discarding;
        }
    }

    private final Tensor values;
    private final Tensor grads;
    private final Tensor fixed;
    private final Map<String, Param> trainable;
    private final Map<String, Param> constant;
    private final List<Segment> segments;
    private final List<Handle> handles;
    private final List<GemmInput> gemmInputs;
    private Precision precision = Precision.FP32;
    /** bf16 copies of {@link #values}, laid out alike; null under fp32. */
    private Tensor shadow;

    private Params(Tensor values, Tensor grads, Tensor fixed, Map<String, Param> trainable, Map<String, Param> constant,
                   List<Segment> segments, List<Handle> handles, List<GemmInput> gemmInputs) {
        this.values = values;
        this.grads = grads;
        this.fixed = fixed;
        this.trainable = trainable;
        this.constant = constant;
        this.segments = segments;
        this.handles = handles;
        this.gemmInputs = gemmInputs;
        for (Handle h : handles) {
            h.owner = this;
        }
    }

    /** While on, parameter gradients go to a sink no one reads; allocated at the first use, laid out like {@link #grads}. */
    private boolean discarding;
    private Tensor sink;

    /**
     * Switches parameter gradients off (on = true) or back on: a backward pass run in between
     * gives only input gradients, for a vector–Jacobian product (the DEQ backward's solver), and
     * leaves {@link #grads} untouched. The normal path does not change.
     */
    public void discardGradients(boolean on) {
        if (on && sink == null) {
            sink = grads.device().allocate(DType.F32, grads.numel());
        }
        discarding = on;
    }

    private Tensor sinkOf(Tensor g) {
        return sink.view(g.offset() - grads.offset(), g.shape());
    }

    public Precision precision() {
        return precision;
    }

    /**
     * Selects the GEMM operand type. {@link Precision#BF16} allocates one bf16 shadow of every
     * trainable weight (the fp32 values stay the master copy the optimizer updates and checkpoints
     * hold) and fills it; {@link Precision#FP32} frees it. The reference device computes in double
     * and models no bf16, so bf16 there is an error.
     */
    public void setPrecision(Precision p) {
        if (p == precision) {
            return;
        }
        if (p == Precision.BF16 && values.device().kind() == Device.Kind.REFERENCE) {
            throw new IllegalArgumentException("precision: bf16 is not modelled on the reference device, which computes "
                    + "in double; use precision: fp32 there");
        }
        dropShadow();
        if (p == Precision.BF16) {
            shadow = values.device().allocate(DType.BF16, values.numel());
            for (Handle h : handles) {
                Param prm = h.get();
                if (prm.grad() != null) {
                    h.shadow = shadow.view(prm.value().offset() - values.offset(), prm.value().shape());
                }
            }
        }
        precision = p;
        refreshShadow();
    }

    /**
     * Rounds the fp32 master weights into their bf16 shadows: after every change of the weights
     * (the optimizer step, a checkpoint load). A no-op under fp32.
     */
    public void refreshShadow() {
        if (shadow != null) {
            values.device().backend().copy(shadow, values);
        }
    }

    private void dropShadow() {
        if (shadow != null) {
            for (Handle h : handles) {
                h.shadow = null;
            }
            shadow.close();
            shadow = null;
        }
    }

    /** The flat buffers' runs by group, in layout order: the optimizer makes one call per segment. */
    public List<Segment> segments() {
        return segments;
    }

    /** Every trainable weight, flat, laid out by {@link #segments}. */
    public Tensor values() {
        return values;
    }

    /** Every gradient, flat, aligned with {@link #values}. */
    public Tensor grads() {
        return grads;
    }

    /** The trainable parameters in declaration order. */
    public List<Param> list() {
        return Collections.unmodifiableList(new ArrayList<>(trainable.values()));
    }

    /** The fixed tensors in declaration order. */
    public List<Param> fixed() {
        return Collections.unmodifiableList(new ArrayList<>(constant.values()));
    }

    /** A trainable parameter or a fixed tensor by name. */
    public Param get(String name) {
        Param p = trainable.containsKey(name) ? trainable.get(name) : constant.get(name);
        if (p == null) {
            throw new IllegalArgumentException("no parameter named " + name);
        }
        return p;
    }

    /** Trainable elements. */
    public int count() {
        return values.numel();
    }

    public void zeroGrad() {
        grads.device().backend().fill(grads, 0f);
    }

    @Override
    public void close() {
        gemmInputs.forEach(GemmInput::close);
        dropShadow();
        values.close();
        grads.close();
        if (sink != null) {
            sink.close();
        }
        fixed.close();
    }
}
