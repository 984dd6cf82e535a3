package org.kindling.cli;

import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import org.kindling.models.mixers.Mixers;
import org.kindling.models.mixers.attention.AttentionSpec;
import picocli.CommandLine;

/**
 * The {@code --mixer} list of the mixer benchmarks: registered token mixer types, read from the
 * registry at run time so every mixer the build registers is measured without code changes.
 */
final class MixerChoice implements Iterable<String> {
    /** The mixer every other one is compared with, measured in the same run. */
    static final String BASELINE = AttentionSpec.TYPE;

    /** Every registered type, for picocli's {@code ${COMPLETION-CANDIDATES}} in help texts. */
    @Override
    public Iterator<String> iterator() {
        return Mixers.types().iterator();
    }

    /**
     * The mixers to measure, the baseline first: every registered type when {@code requested} is
     * null, else those named (the baseline added if missing). Unknown or repeated names are usage errors.
     */
    static List<String> withBaseline(CommandLine cmd, List<String> requested) {
        List<String> names = new ArrayList<>();
        names.add(BASELINE);
        List<String> seen = new ArrayList<>();
        for (String m : requested == null ? List.copyOf(Mixers.types()) : requested) {
            if (!Mixers.types().contains(m)) {
                throw new CommandLine.ParameterException(cmd, "--mixer \"" + m + "\" is not a registered token mixer; known: "
                        + String.join(", ", Mixers.types()));
            }
            if (seen.contains(m)) {
                throw new CommandLine.ParameterException(cmd, "--mixer names \"" + m + "\" twice");
            }
            seen.add(m);
            if (!names.contains(m)) {
                names.add(m);
            }
        }
        return names;
    }

    /** Fails with a usage error naming {@code option} when a value of the list is below 1, or the list repeats one. */
    static List<Integer> positiveList(CommandLine cmd, String option, List<Integer> values) {
        List<Integer> seen = new ArrayList<>();
        for (int v : values) {
            BenchOptions.requirePositive(cmd, option, v);
            if (seen.contains(v)) {
                throw new CommandLine.ParameterException(cmd, option + " lists " + v + " twice");
            }
            seen.add(v);
        }
        return seen;
    }
}
