package org.kindling.cli;

import java.io.IOException;
import java.io.PrintWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.Callable;
import java.util.stream.Stream;
import org.apache.spark.sql.SparkSession;
import org.kindling.api.KindlingApi;
import org.kindling.api.PreparedData;
import org.kindling.api.TrainedRun;
import org.kindling.models.train.StepResult;
import org.kindling.train.TaskDevice;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import picocli.CommandLine;

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
        LocalFiles.deleteTree(run);
        SparkSession spark = SparkSession.builder().appName("kindling quickstart").master("local[*]").getOrCreate();
        TrainedRun trained;
        try {
            err.printf("1/3 preparing %d files of %s as a corpus ...%n", inputs.size(), home);
            err.flush();
            PreparedData prepared = KindlingApi.prepare(spark).input(inputs.toArray(String[]::new)).output(data.toString())
                    .format("text").vocabSize(1024).maxLen(256).dedup(true).maxDocBytes(1 << 20).overwrite(true).progress(err).run();
            err.printf("    %,d documents, %,d tokens, vocabulary %d%n", prepared.documents(), prepared.tokens(), prepared.vocabSize());
            err.printf("2/3 training the tiny preset for %d steps ...%n", steps);
            err.flush();
            trained = KindlingApi.train(spark).preset("tiny").data(prepared).runDir(run.toString()).device(taskDevice).progress(err)
                    .set("max_steps", steps).set("warmup_steps", Math.min(50, steps / 10))
                    .set("checkpoint_interval", Math.max(1, steps / 4)).set("log_interval", Math.max(1, steps / 10)).run();
            List<StepResult> done = trained.trainedSteps();
            err.printf("    step %d, loss %.3f (from %.3f)%n", trained.finalStep(), done.get(done.size() - 1).loss(), done.get(0).loss());
        } finally {
            spark.stop();
        }
        String prompt = "public final class ";
        String sample = prompt + KindlingApi.generate(trained).prompt(prompt).maxNewTokens(120).temperature(0.8).topK(40).topP(0.95)
                .seed(7).device(device.checked(cmd)).run().get(0);
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

}
