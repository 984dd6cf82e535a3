package org.kindling.cli;

import java.io.PrintWriter;
import java.io.StringWriter;

/** A command line run in-process through {@link Kindling#run(PrintWriter, PrintWriter, String...)}: exit code, stdout, stderr. */
record CliRun(int code, String out, String err) {
    static CliRun of(String... args) {
        StringWriter out = new StringWriter();
        StringWriter err = new StringWriter();
        int code = Kindling.run(new PrintWriter(out, true), new PrintWriter(err, true), args);
        return new CliRun(code, out.toString(), err.toString());
    }
}
