package org.kindling.cli;

import java.io.IOException;
import java.io.PrintWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import java.util.stream.Stream;
import org.apache.hadoop.conf.Configuration;
import org.apache.spark.sql.SparkSession;
import org.kindling.data.BpeTokenizer;
import org.kindling.data.PrepareJob;
import org.kindling.data.PrepareOptions;
import org.kindling.models.Gpt;
import org.kindling.models.config.RunConfig;
import org.kindling.models.generate.Sampling;
import org.kindling.models.train.StepResult;
import org.kindling.ops.Device;
import org.kindling.train.RunDir;
import org.kindling.train.TaskDevice;
import org.kindling.train.TrainJob;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

@Command(name = "quickstart", mixinStandardHelpOptions = true,
        description = {"The whole pipeline on local Spark in a few minutes: prepare Kindling's own docs and sources as a",
            "corpus, train the tiny preset on them for about two minutes, and print a generated sample and where",
            "the dataset, run directory, metrics and checkpoints are."})
final class QuickstartCommand implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--dir", defaultValue = "kindling-quickstart", description = "working directory (default ${DEFAULT-VALUE})")
    Path dir;

    @CommandLine.Mixin
    DeviceOption device;

    @Option(names = "--steps", defaultValue = "1500", description = "training steps (default ${DEFAULT-VALUE}, about two minutes on 2 cores)")
    int steps;

    @Override
    public Integer call() throws IOException {
        CommandLine cmd = spec.commandLine();
        BenchOptions.requirePositive(cmd, "--steps", steps);
        TaskDevice taskDevice = TaskDevice.local(device.checked(cmd));
        try {
            taskDevice.check();
        } catch (IllegalArgumentException e) {
            throw new CommandLine.ParameterException(cmd, e.getMessage());
        }
        PrintWriter err = cmd.getErr();
        Path home = Path.of(System.getProperty("kindling.home", ".")).toAbsolutePath().normalize();
        List<String> inputs = corpus(home);
        if (inputs.isEmpty()) {
            throw new CommandLine.ParameterException(cmd, "no Kindling sources under " + home + " to learn from");
        }
        Path data = dir.resolve("data").toAbsolutePath();
        Path run = dir.resolve("run").toAbsolutePath();
        if (Files.exists(dir) && !Files.exists(data.resolve("manifest.json")) && !Files.exists(run)) {
            try (Stream<Path> s = Files.list(dir)) {
                if (s.findAny().isPresent()) {
                    throw new CommandLine.ParameterException(cmd, "--dir " + dir + " holds other files; name an empty or new directory");
                }
            }
        }
        delete(run);
        SparkSession spark = SparkSession.builder().appName("kindling quickstart").master("local[*]").getOrCreate();
        try {
            err.printf("1/3 preparing %d files of %s as a corpus ...%n", inputs.size(), home);
            err.flush();
            PrepareJob.Result prepared = PrepareJob.run(spark, new PrepareOptions(inputs, data.toString(), PrepareOptions.Format.TEXT,
                    false, "text", null, 1024, 256, null, true, 1 << 20, true));
            err.printf("    %,d documents, %,d tokens, vocabulary %d%n", prepared.documents(), prepared.tokens(),
                    prepared.tokenizer().vocabSize());
            err.printf("2/3 training the tiny preset for %d steps ...%n", steps);
            err.flush();
            RunConfig cfg = RunConfig.load(Presets.resolve("tiny"), Map.of("vocab", String.valueOf(prepared.tokenizer().vocabSize()),
                    "max_steps", String.valueOf(steps), "warmup_steps", String.valueOf(Math.min(50, steps / 10)),
                    "checkpoint_interval", String.valueOf(Math.max(1, steps / 4)), "log_interval", String.valueOf(Math.max(1, steps / 10))));
            List<StepResult> trained = TrainJob.run(spark, run.toString(), data.toString(), cfg, 1, taskDevice);
            StepResult last = trained.get(trained.size() - 1);
            err.printf("    step %d, loss %.3f (from %.3f)%n", last.step(), last.loss(), trained.get(0).loss());
        } finally {
            spark.stop();
        }
        RunDir runDir = new RunDir(run.toString(), new Configuration());
        BpeTokenizer tok = runDir.tokenizer();
        String prompt = "public final class ";
        String sample;
        try (Device dev = device.open(cmd); Gpt model = runDir.model(runDir.checkpoint(null), dev)) {
            sample = prompt + RunDir.continuation(model, tok, prompt, 120, new Sampling(0.8, 40, 0.95), 7);
        }
        err.println("3/3 a sample (temperature 0.8, top-k 40, top-p 0.95):");
        err.flush();
        cmd.getOut().println(sample);
        cmd.getOut().flush();
        err.printf("%ndataset      %s%nrun          %s%nmetrics      %s%ncheckpoints  %s%n", data, run, run.resolve("metrics.jsonl"),
                run.resolve("checkpoints"));
        err.printf("next: bin/kindling generate --run %s --prompt \"...\"   |   bin/kindling eval --run %s --data %s%n", run, run, data);
        err.flush();
        return 0;
    }

    /** Kindling's README and main sources: a corpus that every checkout has. */
    private static List<String> corpus(Path home) throws IOException {
        List<String> files = new ArrayList<>();
        if (Files.isRegularFile(home.resolve("README.md"))) {
            files.add(home.resolve("README.md").toString());
        }
        for (String module : new String[] {"gpu-ops", "models", "data-prep", "spark-jobs"}) {
            Path src = home.resolve(module).resolve("src").resolve("main");
            if (Files.isDirectory(src)) {
                try (Stream<Path> s = Files.walk(src)) {
                    s.filter(p -> p.toString().endsWith(".java")).sorted().forEach(p -> files.add(p.toString()));
                }
            }
        }
        return files;
    }

    private static void delete(Path p) throws IOException {
        if (Files.exists(p)) {
            try (Stream<Path> s = Files.walk(p)) {
                for (Path q : s.sorted(Comparator.reverseOrder()).toList()) {
                    Files.delete(q);
                }
            }
        }
    }
}
