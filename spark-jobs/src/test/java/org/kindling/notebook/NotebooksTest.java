package org.kindling.notebook;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Notebooks are committed without outputs: CI executes them, and outputs would only drift and bloat diffs. */
class NotebooksTest {
    @Test
    void committedNotebooksHoldNoOutputs() throws Exception {
        List<Path> committed = Notebooks.committed();
        assertEquals(List.of("mixers.ipynb", "quickstart.ipynb", "tokenizer.ipynb"),
                committed.stream().map(p -> p.getFileName().toString()).toList(), "the notebooks the README lists");
        for (Path notebook : committed) {
            assertEquals(List.of(), Notebooks.outputsIn(notebook),
                    notebook + " was committed with outputs: clear them (jupyter nbconvert --clear-output --inplace)");
        }
    }

    @Test
    void theCheckFindsOutputsAndExecutionCounts(@TempDir Path dir) throws Exception {
        Path nb = dir.resolve("run.ipynb");
        var clean = Notebooks.codeCell("1 + 1", false);
        var ran = Notebooks.codeCell("2 + 2", false).put("execution_count", 3);
        ran.withArray("outputs").addObject().put("output_type", "execute_result");
        Notebooks.write(nb, List.of(clean, ran));
        assertEquals(List.of("cell 1: 1 outputs", "cell 1: execution_count 3"), Notebooks.outputsIn(nb));
    }
}
