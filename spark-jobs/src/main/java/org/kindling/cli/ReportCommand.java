package org.kindling.cli;

import java.io.IOException;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Callable;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.Path;
import org.kindling.report.RunReport;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

@Command(name = "report", mixinStandardHelpOptions = true,
        description = {"Charts of runs' metrics.jsonl (loss and eval loss, learning rate, gradient norm,",
            "tokens/s, every layer metric), each as PNG and SVG, and report.html showing them",
            "with each run's final and best losses and config. --compare adds runs to every",
            "chart, one series per run."})
final class ReportCommand implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--run", required = true, description = "the run directory (any Hadoop path)")
    String run;

    @Option(names = "--compare", arity = "1..*", description = "more run directories to draw on the same charts")
    List<String> compare = new ArrayList<>();

    @Option(names = "--out", description = "the output directory (any Hadoop path; default RUN/report)")
    String out;

    @Option(names = "--json", description = "print {\"report\": path, \"charts\": n, \"runs\": n} on stdout")
    boolean json;

    @Override
    public Integer call() throws IOException {
        List<String> dirs = new ArrayList<>();
        dirs.add(run);
        dirs.addAll(compare);
        Configuration conf = new Configuration();
        RunReport report = RunReport.read(conf, dirs.toArray(String[]::new));
        RunReport.Written written = report.write(out != null ? out : new Path(run, "report").toString(), conf);
        if (json) {
            Map<String, Object> line = new LinkedHashMap<>();
            line.put("report", written.html());
            line.put("charts", written.charts().size());
            line.put("runs", report.runs().size());
            Json.printLine(spec.commandLine().getOut(), line);
        }
        int runs = report.runs().size();
        spec.commandLine().getErr().printf("report %s (%d charts of %d run%s: %s; each also as .png and .svg beside it)%n", written.html(),
                written.charts().size(), runs, runs == 1 ? "" : "s", String.join(", ", written.charts()));
        spec.commandLine().getErr().flush();
        return 0;
    }
}
