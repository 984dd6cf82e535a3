package org.kindling.cli;

import java.io.PrintWriter;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import org.kindling.models.Gpt;
import org.kindling.models.channel.ChannelMixers;
import org.kindling.models.channel.ChannelSpec;
import org.kindling.models.channel.MlpSpec;
import org.kindling.models.channel.MoeSpec;
import org.kindling.models.config.ConfigReader;
import org.kindling.models.config.LayerDefaults;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.config.RunConfig;
import org.kindling.models.config.TrainConfig;
import org.kindling.models.data.DataSource;
import org.kindling.models.data.Synthetic;
import org.kindling.models.mixers.MixerSpec;
import org.kindling.models.mixers.Mixers;
import org.kindling.models.mixers.linear.KernelizedSpec;
import org.kindling.models.mixers.linear.KernelizedSpec.Kernel;
import org.kindling.models.train.DataParallel;
import org.kindling.models.train.StepResult;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

@Command(name = "recall", mixinStandardHelpOptions = true,
        description = {"Held-out accuracy on an H3 synthetic task (associative recall or induction head) after a fixed",
            "step budget, the same for every token mixer: a 2-layer model, d_model 128, 2 heads, vocab 10, 32 tokens,",
            "32 fresh examples per step for 1,500 steps, AdamW at lr 1e-3 (warmup, cosine to lr/10). At this budget",
            "attention and H3 solve both tasks and S4D does not, the ordering of the H3 paper's Table 1; a shorter budget",
            "favours attention, which leaves the plateau first."})
final class RecallBench implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--task", description = "associative-recall or induction-head (default ${DEFAULT-VALUE})",
            defaultValue = "associative-recall")
    String task;

    /** Layer 0 h3, layer 1 attention: the H3 paper's hybrid. */
    static final String HYBRID = "hybrid";
    static final String HYBRID_FIRST = "h3";

    @Option(names = "--mixer", completionCandidates = MixerChoice.class, description = {"token mixer of both layers: "
        + "${COMPLETION-CANDIDATES}, or hybrid (layer 0 h3, layer 1 attention, as in the H3 paper's hybrids)",
        "(default ${DEFAULT-VALUE})"}, defaultValue = "attention")
    String mixer;

    @Option(names = "--kernel", split = ",", description = {"with --mixer kernelized: its feature maps, one trained model",
        "and row each at the same budget (gmm-rks, gmm-prf, rks, prf, fastfood-rks, fastfood-prf, generator-rks,",
        "generator-prf; default: the mixer's default, gmm-rks)"})
    List<String> kernels;

    @Option(names = "--mixer-set", description = {"a key of --mixer's spec, as in the YAML's mixer mapping, e.g.",
        "--mixer-set samples=8 --mixer-set pilot=8 for skein (not with --kernel or hybrid)"})
    Map<String, String> mixerKeys = new LinkedHashMap<>();

    @Option(names = "--channel-mixer", description = "channel mixer of both layers: mlp or moe (default ${DEFAULT-VALUE})",
            defaultValue = MlpSpec.TYPE)
    String channelMixer;

    @Option(names = "--experts", description = "experts of --channel-mixer moe (default: the moe config's, 8)")
    Integer experts;

    @Option(names = "--top-k", description = "experts per token of --channel-mixer moe (default: the moe config's, 1)")
    Integer topK;

    @Option(names = "--steps", description = "optimizer steps (default ${DEFAULT-VALUE})", defaultValue = "1500")
    int steps;

    @Option(names = "--vocab", description = "task vocabulary (default ${DEFAULT-VALUE})", defaultValue = "10")
    int vocab;

    @Option(names = "--seq", description = "tokens per example (default ${DEFAULT-VALUE})", defaultValue = "32")
    int seq;

    @Option(names = "--seed", description = "seed of data and weights (default ${DEFAULT-VALUE})", defaultValue = "1")
    long seed;

    @Option(names = "--d-model", description = "channels of the 2-layer model (default ${DEFAULT-VALUE})", defaultValue = "128")
    int dModel;

    @Option(names = "--heads", description = "attention heads per layer (default ${DEFAULT-VALUE})", defaultValue = "2")
    int heads;

    @Option(names = "--batch", description = "fresh examples per step (default ${DEFAULT-VALUE})", defaultValue = "32")
    int batch;

    @Option(names = "--lr", description = "peak AdamW learning rate (default ${DEFAULT-VALUE})", defaultValue = "1e-3")
    double lr;

    @Option(names = "--replicas", description = {"data-parallel replicas in this JVM, each on --threads/R threads and",
        "batch/R of each step's examples (default: one per thread when the batch divides evenly); the result does not",
        "depend on it beyond fp32 rounding"})
    Integer replicas;

    @CommandLine.Mixin
    BenchOptions common;

    @Override
    public Integer call() {
        CommandLine cmd = spec.commandLine();
        BenchOptions.requirePositive(cmd, "--steps", steps, "--vocab", vocab, "--seq", seq, "--d-model", dModel, "--heads", heads,
                "--batch", batch);
        if (!(lr > 0)) {
            throw new CommandLine.ParameterException(cmd, "--lr must be > 0, got " + lr);
        }
        int threads = common.threads(cmd);
        checkChannelMixer(cmd);
        List<Kernel> kernelList = kernels(cmd);
        if (!kernelList.isEmpty() && !mixerKeys.isEmpty()) {
            throw new CommandLine.ParameterException(cmd, "--mixer-set does not combine with --kernel, which builds its own specs");
        }
        Synthetic.Task t;
        List<ModelConfig> cfgs = new ArrayList<>();
        Synthetic.Examples heldOut;
        try {
            t = Synthetic.Task.parse(task);
            ModelConfig base = ModelConfig.gpt(vocab, dModel, 2, heads, heads, seq, 4, 0, 0.02, 1e-5);
            LayerDefaults defaults = new LayerDefaults(dModel, heads, heads, 4);
            List<List<MixerSpec>> layers = new ArrayList<>();
            if (kernelList.isEmpty()) {
                layers.add(mixers(cmd, defaults));
            }
            for (Kernel k : kernelList) {
                Map<String, Object> m = ConfigReader.ordered();
                m.put("type", KernelizedSpec.TYPE);
                m.put("kernel", k.key());
                layers.add(Collections.nCopies(2, Mixers.read(new ConfigReader("--kernel " + k.key(), "mixer", m), defaults)));
            }
            for (List<MixerSpec> l : layers) {
                ModelConfig cfg = base.withMixers(l);
                if (channelMixer.equals(MoeSpec.TYPE)) {
                    cfg = cfg.withChannelMixers(Collections.nCopies(2, moe(defaults)));
                }
                cfgs.add(cfg);
            }
            heldOut = Synthetic.generate(t, vocab, seq, 1000, -seed);
        } catch (IllegalArgumentException e) {
            throw new CommandLine.ParameterException(cmd, e.getMessage());
        }
        TrainConfig tc = new TrainConfig(seed, lr, lr / 10, Math.min(100, steps / 10), steps, 0.0, 0.9, 0.98, 1e-8, 1.0, 1,
                batch * seq, 100, 0, 1);
        int reps = BenchOptions.replicas(cmd, replicas, batch, threads);
        for (int i = 0; i < cfgs.size(); i++) {
            run(cmd, t, cfgs.get(i), kernelList.isEmpty() ? null : kernelList.get(i), heldOut, tc, reps, threads);
        }
        return 0;
    }

    /** Trains one model for the step budget and prints its row. */
    private void run(CommandLine cmd, Synthetic.Task t, ModelConfig cfg, Kernel kernel, Synthetic.Examples heldOut,
                     TrainConfig tc, int reps, int threads) {
        PrintWriter err = cmd.getErr();
        double accuracy;
        long params;
        long activeParams;
        StepResult last = null;
        try (DataParallel dp = common.replicas(reps, threads / reps, cfg, seed, tc)) {
            List<DataSource> data = new ArrayList<>();
            int per = batch / reps;
            for (int r = 0; r < reps; r++) {
                data.add(Synthetic.stream(t, vocab, seq, batch, seed, r * per, (r + 1) * per));
            }
            for (int i = 0; i < steps; i++) {
                StepResult r = dp.step(data);
                last = r;
                if (r.step() % tc.logInterval() == 0) {
                    err.printf("step %d loss %.4f%s%n", r.step(), r.loss(), r.metricsText());
                    err.flush();
                }
            }
            Gpt model = dp.replicas().get(0).model();
            params = model.parameterCounts().total();
            activeParams = model.parameterCounts().active();
            accuracy = Synthetic.accuracy(model, heldOut, 250);
        }
        String name = kernel != null ? mixer + " " + kernel.key() : mixerKeys.isEmpty() ? mixer : mixer + " " + mixerKeys;
        err.printf("%s with %s and %s (%,d params, %,d active) after %d steps: held-out accuracy %.4f%s%n", t.cliName(), name,
                channelMixer, params, activeParams, steps, accuracy, last.metricsText());
        err.flush();
        if (common.json) {
            Map<String, Object> row = new LinkedHashMap<>();
            row.put("bench", "recall");
            row.put("task", t.cliName());
            row.put("mixer", mixer);
            if (kernel != null) {
                row.put("kernel", kernel.key());
            }
            row.put("steps", steps);
            row.put("accuracy", accuracy);
            row.put("params", params);
            row.put("active_params", activeParams);
            Json.putMetrics(row, last.metrics());
            Json.printLine(cmd.getOut(), row);
        }
    }

    /** --kernel's names, each once, only with --mixer kernelized; empty without --kernel. */
    private List<Kernel> kernels(CommandLine cmd) {
        if (kernels == null) {
            return List.of();
        }
        if (!mixer.equals(KernelizedSpec.TYPE)) {
            throw new CommandLine.ParameterException(cmd, "--kernel applies only with --mixer " + KernelizedSpec.TYPE);
        }
        List<Kernel> out = new ArrayList<>();
        for (String name : kernels) {
            Kernel k = Kernel.find(name).orElseThrow(() -> new CommandLine.ParameterException(cmd,
                    "--kernel \"" + name + "\" is not a kernel; known: " + Kernel.keys()));
            if (out.contains(k)) {
                throw new CommandLine.ParameterException(cmd, "--kernel names \"" + name + "\" twice");
            }
            out.add(k);
        }
        return out;
    }

    /** --channel-mixer names mlp or moe, and the moe options come only with moe. */
    private void checkChannelMixer(CommandLine cmd) {
        if (!channelMixer.equals(MlpSpec.TYPE) && !channelMixer.equals(MoeSpec.TYPE)) {
            throw new CommandLine.ParameterException(cmd, "--channel-mixer \"" + channelMixer + "\" is not mlp or moe");
        }
        if (channelMixer.equals(MlpSpec.TYPE) && (experts != null || topK != null)) {
            throw new CommandLine.ParameterException(cmd, (experts != null ? "--experts" : "--top-k")
                    + " applies only with --channel-mixer moe");
        }
        if (experts != null) {
            BenchOptions.requirePositive(cmd, "--experts", experts);
        }
        if (topK != null) {
            BenchOptions.requirePositive(cmd, "--top-k", topK);
        }
        if (topK != null && experts != null && topK > experts) {
            throw new CommandLine.ParameterException(cmd, "--top-k " + topK + " exceeds --experts " + experts);
        }
    }

    /** Both layers' mixture, read like a config's {@code channel_mixer: {type: moe, …}} so every other key keeps its default. */
    private ChannelSpec moe(LayerDefaults defaults) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("type", MoeSpec.TYPE);
        if (experts != null) {
            m.put("experts", experts);
        }
        if (topK != null) {
            m.put("k", topK);
        }
        return ChannelMixers.read(new ConfigReader("--channel-mixer moe", "channel_mixer", m), defaults);
    }

    /** The two layers' mixers: --mixer in both, or the hybrid. */
    private List<MixerSpec> mixers(CommandLine cmd, LayerDefaults defaults) {
        if (!mixer.equals(HYBRID)) {
            if (mixerKeys.isEmpty()) {
                return Collections.nCopies(2, Mixers.named(mixer, defaults));
            }
            Map<String, Object> m = ConfigReader.ordered();
            m.put("type", mixer);
            mixerKeys.forEach((k, v) -> m.put(k, RunConfig.scalar(v, "--mixer-set " + k)));
            return Collections.nCopies(2, Mixers.read(new ConfigReader("--mixer-set", "mixer", m), defaults));
        }
        if (!mixerKeys.isEmpty()) {
            throw new CommandLine.ParameterException(cmd, "--mixer-set sets keys of one mixer type; --mixer hybrid has two");
        }
        if (!Mixers.types().contains(HYBRID_FIRST)) {
            throw new CommandLine.ParameterException(cmd, "--mixer hybrid needs the " + HYBRID_FIRST + " token mixer, which this "
                    + "build does not register; known: " + String.join(", ", Mixers.types()));
        }
        return List.of(Mixers.named(HYBRID_FIRST, defaults), Mixers.named(MixerChoice.BASELINE, defaults));
    }
}
