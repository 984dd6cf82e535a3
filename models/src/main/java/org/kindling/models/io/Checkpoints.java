package org.kindling.models.io;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.OptionalInt;
import org.kindling.models.Gpt;
import org.kindling.models.config.RunConfig;
import org.kindling.models.nn.Param;
import org.kindling.models.nn.Params;
import org.kindling.models.train.Optimizer;
import org.kindling.models.train.StateTensor;
import org.kindling.models.train.Trainer;
import org.kindling.ops.Tensor;

/**
 * Checkpoints of a run directory: {@code checkpoints/step-N/} holds {@code model.safetensors}
 * (weights and fixed tensors by name), {@code optimizer.safetensors} (the optimizer's state: AdamW's moments
 * {@code m.NAME}, {@code v.NAME}; M-FAC's gradient window, its Gram matrix and momentum) and {@code state.json} (format version, step, each worker's data position, the
 * replicas each worker trained as, RNG seed, resolved config). A checkpoint is written into a temporary directory and renamed into place, then
 * {@code checkpoints/LATEST} is replaced atomically to name it; only the newest K are kept. A
 * crash at any point leaves the previous LATEST checkpoint complete and usable.
 */
public final class Checkpoints {
    /** 2: a data position counts a worker's balanced batches (in version 1 it counted the chunks it had read). */
    public static final int FORMAT_VERSION = 2;
    static final String DIR = "checkpoints";
    static final String LATEST = DIR + "/LATEST";
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final System.Logger LOG = System.getLogger(Checkpoints.class.getName());

    /**
     * What {@code state.json} records besides the tensors.
     *
     * @param dataPositions each worker's data position, by rank (one entry for a single-process run)
     * @param replicasPerWorker the in-process replicas each worker split its batches across, which
     *     set the batch splits, the order of gradient sums and the dropout masks; empty for a
     *     checkpoint written before it was recorded, whose count is unknown
     */
    public record State(int formatVersion, int step, long[] dataPositions, long seed, Map<String, Object> config,
                        OptionalInt replicasPerWorker) {
        /** The data position of rank 0: that of the only worker of a single-process run. */
        public long dataPosition() {
            return dataPositions[0];
        }
    }

    private final RunStorage storage;
    private final int readChunkBytes;

    public Checkpoints(RunStorage storage) {
        this(storage, Safetensors.CHUNK_BYTES);
    }

    /** Reading tensors {@code readChunkBytes} at a time (tests use small pieces to exercise the streaming path). */
    Checkpoints(RunStorage storage, int readChunkBytes) {
        this.storage = storage;
        this.readChunkBytes = readChunkBytes;
    }

    public RunStorage storage() {
        return storage;
    }

    static String name(int step) {
        return "step-" + step;
    }

    /** {@link #save(Trainer, RunConfig, int, int, long[])} of workers that each train one replica. */
    public String save(Trainer trainer, RunConfig config, int keep, long... dataPositions) {
        return save(trainer, config, keep, 1, dataPositions);
    }

    /**
     * Saves the trainer's weights, moments and step with the data positions (one per worker, by
     * rank) and the replicas each worker trains as, then points LATEST at it and prunes to
     * {@code keep}. Saving a step that already exists (a retried task) only re-points LATEST:
     * training is deterministic, so the existing files are the same.
     */
    public String save(Trainer trainer, RunConfig config, int keep, int replicasPerWorker, long[] dataPositions) {
        return save(trainer.stepCount(), path -> writeTensors(path, weights(trainer.model().params())),
                path -> writeTensors(path, optimizerState(trainer.optimizer())), config, keep, replicasPerWorker, dataPositions);
    }

    /** Writes one file of a checkpoint at {@code path}: called only when the checkpoint is not on storage already. */
    private interface FileWriter {
        void write(String path) throws IOException;
    }

    private String save(int step, FileWriter model, FileWriter optimizer, RunConfig config, int keep, int replicasPerWorker,
                        long[] dataPositions) {
        if (dataPositions.length == 0) {
            throw new IllegalArgumentException("a checkpoint needs the data position of every worker, got none");
        }
        if (replicasPerWorker < 1) {
            throw new IllegalArgumentException("a checkpoint's replicas per worker must be at least 1, got " + replicasPerWorker);
        }
        String name = name(step);
        String dir = DIR + "/" + name;
        try {
            if (!storage.exists(dir + "/state.json")) {
                String tmp = DIR + "/.tmp-" + name + "-" + Long.toHexString(System.nanoTime());
                model.write(tmp + "/model.safetensors");
                optimizer.write(tmp + "/optimizer.safetensors");
                ObjectNode state = JSON.createObjectNode();
                state.put("format_version", FORMAT_VERSION);
                state.put("step", step);
                state.put("data_position", dataPositions[0]);
                var positions = state.putArray("data_positions");
                for (long p : dataPositions) {
                    positions.add(p);
                }
                state.put("replicas_per_worker", replicasPerWorker);
                state.putObject("rng").put("seed", config.train().seed());
                state.set("config", JSON.valueToTree(config.toMap()));
                try (OutputStream out = storage.create(tmp + "/state.json")) {
                    out.write(JSON.writerWithDefaultPrettyPrinter().writeValueAsBytes(state));
                }
                storage.delete(dir); // a directory without state.json is an interrupted rename target: redo it
                storage.rename(tmp, dir);
            }
            try (OutputStream out = storage.create(LATEST + ".tmp")) {
                out.write((name + "\n").getBytes(StandardCharsets.UTF_8));
            }
            storage.replace(LATEST + ".tmp", LATEST);
            prune(keep, name);
        } catch (IOException e) {
            throw new UncheckedIOException("cannot write checkpoint " + storage.describe(dir) + ": " + e.getMessage(), e);
        }
        return name;
    }

    private static String partDir(int step, int part) {
        return DIR + "/.parts-" + name(step) + "/part-" + part;
    }

    /**
     * A pipeline stage's share of checkpoint {@code step}: its weights and optimizer state, written
     * where {@link #saveParts} gathers them into one checkpoint.
     */
    public void savePart(int step, int part, Params params, Optimizer optimizer) {
        String dir = partDir(step, part);
        try {
            if (!storage.exists(DIR + "/" + name(step) + "/state.json")) {
                writeTensors(dir + "/model.safetensors", weights(params));
                writeTensors(dir + "/optimizer.safetensors", optimizerState(optimizer));
            }
        } catch (IOException e) {
            throw new UncheckedIOException("cannot write checkpoint part " + storage.describe(dir) + ": " + e.getMessage(), e);
        }
    }

    /**
     * Checkpoint {@code step} from the {@code parts} stages' {@link #savePart shares}, as one model
     * would have saved it: the same files, tensors in {@code order} (a whole model's {@link
     * org.kindling.models.Gpt#tensorOrder}; a tensor two stages hold, the tied embedding, is taken
     * from the first), so eval, generate, export and a run with other parallelism read it as any
     * other. The shares are deleted afterwards.
     */
    public String saveParts(int step, int parts, List<String> order, RunConfig config, int keep, int replicasPerWorker,
                            long[] dataPositions) {
        String name = save(step, path -> merge(path, step, parts, "model.safetensors", order),
                path -> merge(path, step, parts, "optimizer.safetensors", order), config, keep, replicasPerWorker, dataPositions);
        try {
            storage.delete(DIR + "/.parts-" + name(step));
        } catch (IOException e) {
            // The checkpoint is complete; the leftover shares only take space until a retry of this step rewrites them.
            LOG.log(System.Logger.Level.WARNING, "cannot delete the checkpoint shares " + storage.describe(DIR + "/.parts-" + name(step))
                    + ": " + e.getMessage());
        }
        return name;
    }

    /**
     * Writes at {@code path} one file of every part, its tensors in {@code order} by the name they
     * are a state of ({@code m.NAME}: NAME's), the first part's copy of a tensor two hold. Streamed:
     * each part is read once, front to back (its tensors are in the model's order already, as
     * {@link #savePart} wrote them), a buffer at a time, so no tensor is held in memory.
     */
    private void merge(String path, int step, int parts, String file, List<String> order) throws IOException {
        Map<String, Integer> rank = new java.util.HashMap<>();
        for (int i = 0; i < order.size(); i++) {
            rank.put(order.get(i), i);
        }
        String shares = storage.describe(DIR + "/.parts-" + name(step));
        List<InputStream> ins = new ArrayList<>();
        try {
            List<String> names = new ArrayList<>();
            Map<String, Safetensors.Entry> where = new java.util.HashMap<>();
            Map<String, Integer> from = new java.util.HashMap<>();
            Map<String, String> metadata = null;
            for (int part = 0; part < parts; part++) {
                String p = partDir(step, part) + "/" + file;
                InputStream in = storage.open(p);
                ins.add(in);
                Safetensors.Layout layout = Safetensors.layout(in, storage.describe(p));
                metadata = metadata == null ? layout.metadata() : metadata;
                for (Safetensors.Entry e : layout.entries()) {
                    if (rank.get(owner(e.name())) == null) {
                        throw new IllegalStateException(shares + ": tensor " + e.name() + " belongs to no tensor of the model");
                    }
                    if (where.putIfAbsent(e.name(), e) == null) {
                        from.put(e.name(), part);
                        names.add(e.name());
                    }
                }
            }
            // Stable: a parameter's several states (m., v.) keep the order its stage wrote them in.
            names.sort(java.util.Comparator.comparingInt(n -> rank.get(owner(n))));
            Map<String, int[]> shapes = new LinkedHashMap<>();
            names.forEach(n -> shapes.put(n, where.get(n).shape()));
            long[] at = new long[parts];
            byte[] buffer = new byte[Safetensors.CHUNK_BYTES];
            try (OutputStream out = storage.create(path)) {
                Safetensors.writeHeader(out, shapes, metadata);
                for (String n : names) {
                    Safetensors.Entry e = where.get(n);
                    int part = from.get(n);
                    InputStream in = ins.get(part);
                    if (e.begin() < at[part]) {
                        throw new IllegalStateException(shares + ": part " + part + " holds " + n + " before a tensor the model "
                                + "orders ahead of it");
                    }
                    in.skipNBytes(e.begin() - at[part]);
                    for (long left = e.end() - e.begin(); left > 0; ) {
                        int k = (int) Math.min(buffer.length, left);
                        int got = in.readNBytes(buffer, 0, k);
                        if (got < k) {
                            throw new CorruptFileException(shares + ": part " + part + " ends inside tensor " + n);
                        }
                        out.write(buffer, 0, k);
                        left -= k;
                    }
                    at[part] = e.end();
                }
            }
        } finally {
            for (InputStream in : ins) {
                in.close();
            }
        }
    }

    /** The model tensor a state tensor belongs to: NAME for {@code m.NAME} and {@code v.NAME}, else itself. */
    private static String owner(String tensor) {
        return tensor.startsWith("m.") || tensor.startsWith("v.") ? tensor.substring(2) : tensor;
    }

    /** The checkpoint LATEST names, if the run has one. */
    public Optional<String> latest() {
        try {
            if (!storage.exists(LATEST)) {
                return Optional.empty();
            }
            String name;
            try (InputStream in = storage.open(LATEST)) {
                name = new String(in.readAllBytes(), StandardCharsets.UTF_8).trim();
            }
            if (!name.matches("step-\\d+") || !storage.exists(DIR + "/" + name + "/state.json")) {
                throw new IllegalStateException(storage.describe(LATEST) + " names \"" + name
                        + "\", which is not a complete checkpoint of this run");
            }
            return Optional.of(name);
        } catch (IOException e) {
            throw new UncheckedIOException("cannot read " + storage.describe(LATEST), e);
        }
    }

    /** Step numbers of the complete checkpoints on disk, ascending. */
    public List<Integer> steps() {
        List<Integer> out = new ArrayList<>();
        try {
            for (String entry : storage.list(DIR)) {
                if (entry.matches("step-\\d+") && storage.exists(DIR + "/" + entry + "/state.json")) {
                    out.add(Integer.parseInt(entry.substring(5)));
                }
            }
        } catch (IOException e) {
            throw new UncheckedIOException("cannot list " + storage.describe(DIR), e);
        }
        out.sort(null);
        return out;
    }

    private void prune(int keep, String current) throws IOException {
        List<Integer> steps = steps();
        for (int i = 0; i < steps.size() - keep; i++) {
            String name = name(steps.get(i));
            if (!name.equals(current)) {
                storage.delete(DIR + "/" + name);
            }
        }
        for (String entry : storage.list(DIR)) {
            if (entry.startsWith(".tmp-")) {
                storage.delete(DIR + "/" + entry); // leftovers of interrupted saves
            }
        }
    }

    /** Reads a checkpoint's state.json. */
    public State state(String name) {
        String path = DIR + "/" + name + "/state.json";
        try (InputStream in = storage.open(path)) {
            JsonNode s;
            try {
                s = JSON.readTree(in);
            } catch (com.fasterxml.jackson.core.JsonProcessingException e) {
                throw corrupt(storage.describe(path) + ": not valid JSON: " + e.getMessage(), e);
            }
            if (s == null) {
                throw corrupt(storage.describe(path) + ": empty", null);
            }
            int version = s.path("format_version").asInt(-1);
            if (version != FORMAT_VERSION && version != 1) {
                throw corrupt(storage.describe(path) + ": format_version " + s.path("format_version") + " is not a supported one (1 "
                        + "or " + FORMAT_VERSION + ")", null);
            }
            for (String field : new String[] {"step", "data_position", "config"}) {
                if (s.path(field).isMissingNode()) {
                    throw corrupt(storage.describe(path) + ": missing field " + field, null);
                }
            }
            @SuppressWarnings("unchecked")
            Map<String, Object> config = JSON.convertValue(s.get("config"), Map.class);
            long[] positions;
            if (s.path("data_positions").isArray() && !s.get("data_positions").isEmpty()) {
                positions = new long[s.get("data_positions").size()];
                for (int i = 0; i < positions.length; i++) {
                    positions[i] = s.get("data_positions").get(i).asLong();
                }
            } else {
                positions = new long[] {s.get("data_position").asLong()};
            }
            OptionalInt replicas = OptionalInt.empty();
            if (!s.path("replicas_per_worker").isMissingNode()) {
                JsonNode r = s.get("replicas_per_worker");
                if (!r.canConvertToInt() || !r.isIntegralNumber() || r.asInt() < 1) {
                    throw corrupt(storage.describe(path) + ": replicas_per_worker " + r + " is not a positive integer", null);
                }
                replicas = OptionalInt.of(r.asInt());
            }
            return new State(version, s.get("step").asInt(), positions, s.path("rng").path("seed").asLong(), config, replicas);
        } catch (IOException e) {
            throw new UncheckedIOException("cannot read " + storage.describe(path), e);
        }
    }

    /** A checkpoint file that reading again cannot fix: marked by a {@link CorruptFileException} cause. */
    private static IllegalStateException corrupt(String message, Throwable cause) {
        return new IllegalStateException(message, new CorruptFileException(message, cause));
    }

    /** Loads a checkpoint's weights into a model of the same architecture. */
    public void loadWeights(String name, Gpt model) {
        loadWeights(name, model.params(), null);
    }

    /** Loads a checkpoint's tensors of {@code params}; those of {@code model}'s other stages (when not null) are skipped. */
    private void loadWeights(String name, Params params, java.util.Set<String> model) {
        Map<String, StateTensor> targets = new LinkedHashMap<>();
        for (Param p : params.list()) {
            targets.put(p.name(), StateTensor.of(p.value()));
        }
        for (Param p : params.fixed()) {
            targets.put(p.name(), StateTensor.of(p.value()));
        }
        readInto(DIR + "/" + name + "/model.safetensors", targets, model);
        params.refreshShadow();
    }

    /** Restores weights, the optimizer's state and the step counter; returns the checkpoint's state. */
    public State restore(String name, Trainer trainer) {
        State state = restore(name, trainer.model().params(), trainer.optimizer(), null);
        trainer.restoreStep(state.step());
        return state;
    }

    /**
     * Restores a pipeline stage's weights and optimizer state (its parameters' tensors of a whole
     * model's checkpoint); returns the checkpoint's state, whose step the caller takes up.
     */
    public State restorePart(String name, Params params, Optimizer optimizer, java.util.Set<String> model) {
        return restore(name, params, optimizer, model);
    }

    /** With {@code model} (a pipeline stage's whole model's tensor names), the checkpoint's tensors of other stages are skipped. */
    private State restore(String name, Params params, Optimizer optimizer, java.util.Set<String> model) {
        State state = state(name);
        if (state.formatVersion() != FORMAT_VERSION) {
            // Its weights still serve eval, generate and export; only its data positions mean something else now.
            throw new IllegalStateException(storage.describe(DIR + "/" + name + "/state.json") + ": format_version "
                    + state.formatVersion() + " cannot resume training here: its data positions count the chunks each worker "
                    + "read, not the batches this Kindling balances across workers (format_version " + FORMAT_VERSION
                    + "); start a new run (its weights still serve `kindling eval`, `generate` and `export`), or resume with "
                    + "the Kindling that wrote it", new CorruptFileException("format_version " + state.formatVersion()));
        }
        loadWeights(name, params, model);
        // A checkpoint of another optimizer lacks this one's tensors: readInto names the first missing or foreign one.
        readInto(DIR + "/" + name + "/optimizer.safetensors", optimizer.state(), model);
        optimizer.restored();
        return state;
    }

    /**
     * Streams a file's tensors straight into {@code targets} (by name), a piece at a time, so no
     * host copy of the whole file or of a whole tensor is made. A tensor the model lacks, one the
     * file lacks, or one of another shape is an error naming the file: nothing is skipped silently,
     * except, for a pipeline stage, the tensors of {@code model}'s other stages (null: none).
     */
    private void readInto(String path, Map<String, StateTensor> targets, java.util.Set<String> model) {
        String source = storage.describe(path);
        java.util.Set<String> seen = new java.util.HashSet<>();
        try (InputStream in = storage.open(path)) {
            Safetensors.read(in, source, readChunkBytes, new Safetensors.Sink() {
                private StateTensor dst;

                @Override
                public void begin(String name, int[] shape) {
                    dst = targets.get(name);
                    if (dst == null && model != null && model.contains(owner(name))) {
                        return; // another stage's tensor
                    }
                    if (dst == null) {
                        throw new IllegalStateException(source + ": tensor " + name + " is not part of this model "
                                + "(a checkpoint of another architecture or configuration?)");
                    }
                    if (!Arrays.equals(shape, dst.shape())) {
                        throw new IllegalStateException(source + ": tensor " + name + " has shape " + Arrays.toString(shape)
                                + " but the model expects " + Arrays.toString(dst.shape()));
                    }
                    seen.add(name);
                }

                @Override
                public void values(long offset, float[] values) {
                    if (dst != null) {
                        dst.write(offset, values);
                    }
                }
            });
        } catch (IOException e) {
            throw new IllegalStateException(e.getMessage(), e);
        }
        for (String name : targets.keySet()) {
            if (!seen.contains(name)) {
                throw new IllegalStateException(source + " has no tensor " + name);
            }
        }
    }

    private void writeTensors(String path, Map<String, Safetensors.Tensor> tensors) throws IOException {
        try (OutputStream out = storage.create(path)) {
            Safetensors.write(out, tensors, Map.of("format", "pt"));
        }
    }

    private static Map<String, Safetensors.Tensor> weights(Params params) {
        Map<String, Safetensors.Tensor> out = new LinkedHashMap<>();
        for (Param p : params.list()) {
            out.put(p.name(), new Safetensors.Tensor(p.shape(), p.value().toFloatArray()));
        }
        for (Param p : params.fixed()) {
            out.put(p.name(), new Safetensors.Tensor(p.shape(), p.value().toFloatArray()));
        }
        return out;
    }

    private static Map<String, Safetensors.Tensor> optimizerState(Optimizer optimizer) {
        Map<String, Safetensors.Tensor> out = new LinkedHashMap<>();
        optimizer.state().forEach((n, t) -> out.put(n, new Safetensors.Tensor(t.shape(), t.read())));
        return out;
    }
}
