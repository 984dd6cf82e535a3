package org.kindling.cli;

import java.io.PrintWriter;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.concurrent.Callable;
import org.kindling.models.DecodeSession;
import org.kindling.models.Gpt;
import org.kindling.models.channel.ChannelMixers;
import org.kindling.models.channel.MlpSpec;
import org.kindling.models.channel.SparseFfnSpec;
import org.kindling.models.config.ConfigReader;
import org.kindling.models.config.LayerDefaults;
import org.kindling.models.config.ModelConfig;
import org.kindling.models.mixers.Mixers;
import org.kindling.models.mixers.attention.AttentionSpec;
import org.kindling.ops.Device;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

@Command(name = "decode", mixinStandardHelpOptions = true,
        description = {"Incremental decoding speed of a small model per token mixer (vocab 256, no position embedding, so",
            "contexts are unbounded) beside attention's in the same run: a decoding session is prefilled with --context random",
            "tokens (untimed), then --tokens one-token steps are timed one by one (the median step is reported; 64 untimed",
            "steps of a second session warm up first). Prints the session's decoding state bytes: growing with the context",
            "for attention, constant for recurrent mixers. --ffn and --qkv measure Scaling Transformers' sparse layers the same",
            "way: every (ffn, qkv) pair of the lists, for attention, beside dense/dense."})
final class DecodeBench implements Callable<Integer> {
    static final int VOCAB = 256;
    static final int WARMUP_STEPS = 64;

    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--mixer", split = ",", completionCandidates = MixerChoice.class,
            description = "token mixers to measure beside attention (default: every registered one: ${COMPLETION-CANDIDATES})")
    List<String> mixers;

    @Option(names = "--context", split = ",", description = "tokens prefilled before the timed steps, one row per value "
            + "(default ${DEFAULT-VALUE})", defaultValue = "256,1024,4096")
    List<Integer> contexts;

    @Option(names = "--tokens", description = "timed one-token steps after the prefill (default ${DEFAULT-VALUE})",
            defaultValue = "64")
    int tokens;

    @Option(names = "--d-model", description = "channels C of the model (default ${DEFAULT-VALUE})", defaultValue = "256")
    int dModel;

    @Option(names = "--layers", description = "blocks of the model, all of one mixer (default ${DEFAULT-VALUE})", defaultValue = "2")
    int layers;

    @Option(names = "--heads", description = "heads of mixers that have them (default ${DEFAULT-VALUE})", defaultValue = "4")
    int heads;

    @Option(names = "--ffn", split = ",", description = "channel mixers of every layer: dense (an MLP of 4·d) or sparse (sparse_ffn, "
            + "d_ff 4·d, one unit of every 32 active); default ${DEFAULT-VALUE}", defaultValue = "dense")
    List<String> ffns;

    @Option(names = "--qkv", split = ",", description = "attention's q, k, v: dense or multiplicative (the multiplicative layer and "
            + "its convolution); default ${DEFAULT-VALUE}", defaultValue = "dense")
    List<String> qkvs;

    @CommandLine.Mixin
    BenchOptions common;

    @Override
    public Integer call() throws Exception {
        CommandLine cmd = spec.commandLine();
        BenchOptions.requirePositive(cmd, "--tokens", tokens, "--d-model", dModel, "--layers", layers, "--heads", heads);
        List<Integer> lengths = MixerChoice.positiveList(cmd, "--context", contexts);
        List<String> ffnList = choices(cmd, "--ffn", ffns, FFNS.keySet());
        List<String> qkvList = choices(cmd, "--qkv", qkvs, List.of("dense", "multiplicative"));
        boolean sparseLayers = !ffnList.equals(List.of("dense")) || !qkvList.equals(List.of("dense"));
        // Scaling Transformers' layers are measured on attention models unless other mixers are asked for too.
        List<String> names = MixerChoice.withBaseline(cmd, mixers == null && sparseLayers ? List.of(MixerChoice.BASELINE) : mixers);
        int threads = common.threads(cmd);
        LayerDefaults defaults = new LayerDefaults(dModel, heads, heads, 4);
        List<Variant> variants = new ArrayList<>();
        for (String m : names) {
            for (String ffn : ffnList) {
                for (String qkv : qkvList) {
                    if (!qkv.equals("dense") && !m.equals(AttentionSpec.TYPE)) {
                        continue;
                    }
                    try {
                        Map<String, Object> mixer = ConfigReader.ordered();
                        mixer.put("type", m);
                        if (!qkv.equals("dense")) {
                            mixer.put("qkv", qkv);
                        }
                        Map<String, Object> channel = ConfigReader.ordered();
                        channel.put("type", FFNS.get(ffn));
                        ModelConfig cfg = ModelConfig.gpt(VOCAB, dModel, layers, heads, heads, 1, 4, 0, 0.02, 1e-5)
                                .withPositions(ModelConfig.PosEmb.NONE, 0)
                                .withMixers(Collections.nCopies(layers, Mixers.read(new ConfigReader("--mixer", "mixer", mixer), defaults)))
                                .withChannelMixers(Collections.nCopies(layers,
                                        ChannelMixers.read(new ConfigReader("--ffn", "channel_mixer", channel), defaults)));
                        variants.add(new Variant(m, ffn, qkv, cfg));
                    } catch (IllegalArgumentException e) {
                        throw new CommandLine.ParameterException(cmd, "--mixer " + m + ", --ffn " + ffn + ", --qkv " + qkv + ": "
                                + e.getMessage());
                    }
                }
            }
        }
        PrintWriter err = cmd.getErr();
        err.printf("decoding one sequence, %d layers, C=%d, vocab %d, %d threads; tokens/s of the median of %d one-token steps%n",
                layers, dModel, VOCAB, threads, tokens);
        for (int context : lengths) {
            Variant first = variants.get(0);
            double baseline = 0;
            for (Variant v : variants) {
                Decoded d = decode(v.config(), v.label(), context, threads);
                if (v == first) {
                    baseline = d.tokensPerS();
                    err.printf("  context %-6d %-34s %10.1f tokens/s  state %d → %d bytes%n", context, v.label(), d.tokensPerS(),
                            d.stateBefore(), d.stateAfter());
                } else {
                    err.printf("  context %-6d %-34s %10.1f tokens/s  state %d → %d bytes  (%s %.1f tokens/s: %.2fx its speed)%n",
                            context, v.label(), d.tokensPerS(), d.stateBefore(), d.stateAfter(), first.label(), baseline,
                            d.tokensPerS() / baseline);
                }
                err.flush();
                if (common.json) {
                    Map<String, Object> row = new LinkedHashMap<>();
                    row.put("bench", "decode");
                    row.put("mixer", v.mixer());
                    row.put("ffn", v.ffn());
                    row.put("qkv", v.qkv());
                    row.put("context", context);
                    row.put("tokens_per_s", BenchOptions.round(d.tokensPerS()));
                    Json.printLine(cmd.getOut(), row);
                }
            }
        }
        return 0;
    }

    /** The channel mixer type of each --ffn choice. */
    private static final Map<String, String> FFNS = new java.util.TreeMap<>(Map.of("dense", MlpSpec.TYPE, "sparse", SparseFfnSpec.TYPE));

    /** One model measured: its token mixer, FFN and q, k, v choices. */
    private record Variant(String mixer, String ffn, String qkv, ModelConfig config) {
        String label() {
            return mixer + " ffn " + ffn + " qkv " + qkv;
        }
    }

    /** The list in order, dense first (the baseline) whether named or not; unknown or repeated values are usage errors. */
    private static List<String> choices(CommandLine cmd, String option, List<String> values, java.util.Collection<String> known) {
        List<String> out = new ArrayList<>(List.of("dense"));
        List<String> seen = new ArrayList<>();
        for (String v : values) {
            if (!known.contains(v)) {
                throw new CommandLine.ParameterException(cmd, option + " \"" + v + "\" is unknown; known: " + String.join(", ", known));
            }
            if (seen.contains(v)) {
                throw new CommandLine.ParameterException(cmd, option + " names \"" + v + "\" twice");
            }
            seen.add(v);
            if (!out.contains(v)) {
                out.add(v);
            }
        }
        return out;
    }

    /** Tokens/s at the median step, and the session's state bytes after the prefill and after the timed steps. */
    record Decoded(double tokensPerS, long stateBefore, long stateAfter) {
    }

    private Decoded decode(ModelConfig cfg, String mixer, int context, int threads) throws Exception {
        SplittableRandom rnd = new SplittableRandom(context);
        int[] prompt = rnd.ints(context, 0, VOCAB).toArray();
        int[][] next = new int[1][1];
        try (Device dev = common.open(threads); Gpt model = new Gpt(cfg, dev, 1); DecodeSession session = model.newSession(1);
             DecodeSession warm = model.newSession(1)) {
            session.step(new int[][] {prompt});
            long before = session.stateBytes();
            Timing.Trial timed = new Timing.Trial() {
                @Override
                public void before() {
                    next[0][0] = rnd.nextInt(VOCAB);
                }

                @Override
                public void run() {
                    session.step(next);
                }
            };
            // Warm-up steps go to a second session, so the timed steps start exactly at --context.
            Timing.Stats stats = Timing.measure(new Timing.Rule(WARMUP_STEPS, tokens, 0), () -> warm.step(next), timed);
            return new Decoded(stats.medianRate(1), before, session.stateBytes());
        } catch (OutOfMemoryError e) {
            throw new IllegalStateException("out of memory decoding " + mixer + " at --context " + context
                    + "; measure shorter contexts or give the JVM more heap (KINDLING_JAVA_OPTS=-Xmx…)", e);
        }
    }
}
