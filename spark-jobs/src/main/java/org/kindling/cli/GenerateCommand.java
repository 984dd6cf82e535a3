package org.kindling.cli;

import java.io.IOException;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import org.kindling.api.GenerateBuilder;
import org.kindling.api.InvalidOptionException;
import org.kindling.api.KindlingApi;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import picocli.CommandLine;

@Command(name = "generate", mixinStandardHelpOptions = true,
        description = {"Sample a continuation of a prompt from a run's checkpoint. Prints only the generated text on",
            "stdout. --temperature 0 is greedy; an empty prompt starts from the end-of-text token. Several --prompt",
            "options decode together as one batch, each continuing as it would alone: their continuations print in",
            "order, one per line, or with --json one line {\"prompt\": …, \"text\": …} each."})
final class GenerateCommand implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @CommandLine.Mixin
    RunOptions target;

    @CommandLine.Mixin
    DeviceOption device;

    @Option(names = "--prompt", description = "text to continue (default: empty); repeat for a batch of prompts")
    List<String> prompts;

    @Option(names = "--json", description = "one JSON line per prompt on stdout: prompt, text")
    boolean json;

    @Option(names = "--max-new-tokens", defaultValue = "64", description = "tokens to generate at most (default ${DEFAULT-VALUE})")
    int maxNewTokens;

    @Option(names = "--temperature", defaultValue = "1.0", description = "0 = greedy (default ${DEFAULT-VALUE})")
    double temperature;

    @Option(names = "--top-k", defaultValue = "0", description = "sample from the k most likely tokens; 0 = all (default ${DEFAULT-VALUE})")
    int topK;

    @Option(names = "--top-p", defaultValue = "1.0", description = "nucleus sampling mass (default ${DEFAULT-VALUE})")
    double topP;

    @Option(names = "--seed", defaultValue = "0", description = "sampling seed (default ${DEFAULT-VALUE})")
    long seed;

    @Override
    public Integer call() throws IOException {
        CommandLine cmd = spec.commandLine();
        List<String> in = prompts == null ? List.of("") : prompts;
        GenerateBuilder b = KindlingApi.generate(target.run).prompt(in.toArray(String[]::new)).maxNewTokens(maxNewTokens)
                .temperature(temperature).topK(topK).topP(topP).seed(seed).device(device.checked(cmd));
        if (target.step != null) {
            b.step(target.step);
        }
        List<String> texts;
        try {
            texts = b.run();
        } catch (InvalidOptionException e) {
            throw Kindling.usage(cmd, e);
        }
        cmd.getErr().printf("%s, %s%n", target.run, b.checkpoint());
        cmd.getErr().flush();
        for (int i = 0; i < texts.size(); i++) {
            if (json) {
                Map<String, Object> row = new LinkedHashMap<>();
                row.put("prompt", in.get(i));
                row.put("text", texts.get(i));
                Json.printLine(cmd.getOut(), row);
            } else {
                cmd.getOut().println(texts.get(i));
            }
        }
        cmd.getOut().flush();
        return 0;
    }
}
