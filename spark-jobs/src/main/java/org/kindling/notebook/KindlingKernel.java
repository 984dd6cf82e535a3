package org.kindling.notebook;

import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.stream.Collectors;
import jdk.jshell.Diag;
import jdk.jshell.EvalException;
import jdk.jshell.JShell;
import jdk.jshell.JShellException;
import jdk.jshell.Snippet;
import jdk.jshell.SnippetEvent;
import jdk.jshell.SourceCodeAnalysis;
import jdk.jshell.SourceCodeAnalysis.Completeness;
import jdk.jshell.SourceCodeAnalysis.CompletionInfo;
import jdk.jshell.UnresolvedReferenceException;
import jdk.jshell.VarSnippet;
import org.apache.spark.sql.SparkSession;
import org.dflib.jjava.jupyter.channels.JupyterConnection;
import org.dflib.jjava.jupyter.kernel.BaseKernel;
import org.dflib.jjava.jupyter.kernel.BaseKernelBuilder;
import org.dflib.jjava.jupyter.kernel.JupyterIO;
import org.dflib.jjava.jupyter.kernel.KernelConnectionProperties;
import org.dflib.jjava.jupyter.kernel.LanguageInfo;
import org.dflib.jjava.jupyter.kernel.ReplacementOptions;
import org.dflib.jjava.jupyter.kernel.comm.CommManager;
import org.dflib.jjava.jupyter.kernel.display.DisplayData;
import org.dflib.jjava.jupyter.kernel.display.Renderer;
import org.dflib.jjava.jupyter.kernel.history.HistoryManager;
import org.dflib.jjava.jupyter.kernel.magic.MagicsRegistry;
import org.dflib.jjava.jupyter.kernel.util.StringStyler;
import org.kindling.cli.BuildInfo;

/**
 * The Jupyter kernel behind {@code bin/kindling notebook}: JShell executing in this JVM, whose
 * classpath is Kindling's with Spark, so a notebook's SparkSession and models live here.
 * {@code main} takes the connection file Jupyter writes.
 */
public final class KindlingKernel extends BaseKernel {
    /** Largest message frame accepted on any kernel socket: cells and comm messages are far smaller. */
    static final long MAX_MESSAGE_BYTES = 64L << 20;

    private final JShell shell;
    private final CellExecutionControl control;

    private KindlingKernel(String name, String version, HistoryManager history, JupyterIO io, CommManager comms,
            Renderer renderer, MagicsRegistry magics, StringStyler errorStyler, CellExecutionControl control) {
        super(name, version,
                new LanguageInfo.Builder("java").version(Runtime.version().toString()).mimetype("text/x-java-source")
                        .fileExtension(".jshell").pygments("java").codemirror("text/x-java").build(),
                List.of(), history, io, comms, renderer, null, magics, false, errorStyler);
        this.control = control;
        this.shell = JShell.builder()
                .executionEngine(new CellExecutionControl.Provider(control), java.util.Map.of())
                .compilerOptions("--class-path", System.getProperty("java.class.path"))
                .build();
        evalRaw("import org.kindling.notebook.Display;");
    }

    /** A kernel not yet connected to Jupyter (tests drive {@link #evalRaw} directly). */
    public static KindlingKernel create() {
        return new Builder().name("kindling").version(BuildInfo.version()).build();
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: java " + KindlingKernel.class.getName() + " CONNECTION_FILE");
            System.exit(2);
        }
        KernelConnectionProperties props;
        try {
            props = ConnectionFile.read(Path.of(args[0]));
        } catch (IOException | IllegalArgumentException e) {
            System.err.println("kindling kernel: " + e.getMessage());
            System.exit(2);
            return;
        }
        KindlingKernel kernel = create();
        JupyterConnection connection = new CappedConnection(props);
        kernel.becomeHandlerForConnection(connection);
        kernel.onStartup();
        connection.connect();
        connection.waitUntilClose();
        kernel.shell.close();
        // Spark and the notebook's own threads are not daemons: end the JVM with the connection.
        System.exit(0);
    }

    @Override
    public Object evalRaw(String code) {
        SourceCodeAnalysis analysis = shell.sourceCodeAnalysis();
        String remaining = code;
        String value = null;
        while (!remaining.isBlank()) {
            CompletionInfo info = analysis.analyzeCompletion(remaining);
            if (info.completeness() == Completeness.EMPTY) {
                break;
            }
            // An incomplete or unparsable rest is compiled whole, so the error shows javac's diagnostic.
            String source = info.source() != null ? info.source() : remaining;
            remaining = info.source() != null ? info.remaining() : "";
            value = evalSnippet(source);
        }
        return value;
    }

    /** Evaluates one snippet; returns its value when it is an expression, else null. */
    private String evalSnippet(String source) {
        String value = null;
        for (SnippetEvent event : shell.eval(source)) {
            if (event.causeSnippet() != null) {
                continue;
            }
            Snippet snippet = event.snippet();
            if (event.status() == Snippet.Status.REJECTED) {
                throw compileError(snippet);
            }
            if (event.exception() != null) {
                throw runtimeError(event.exception(), snippet);
            }
            boolean expression = snippet.kind() == Snippet.Kind.EXPRESSION
                    || snippet instanceof VarSnippet && snippet.subKind() == Snippet.SubKind.TEMP_VAR_EXPRESSION_SUBKIND;
            value = expression ? event.value() : null;
        }
        return value;
    }

    private CellError compileError(Snippet snippet) {
        List<Diag> diags = shell.diagnostics(snippet).filter(Diag::isError).toList();
        List<String> lines = new ArrayList<>();
        String source = snippet.source();
        for (Diag d : diags) {
            lines.add("error: " + d.getMessage(Locale.ROOT));
            if (d.getStartPosition() >= 0 && d.getStartPosition() <= source.length()) {
                int start = source.lastIndexOf('\n', (int) Math.max(0, d.getStartPosition() - 1)) + 1;
                int end = source.indexOf('\n', (int) d.getStartPosition());
                lines.add("    " + source.substring(start, end < 0 ? source.length() : end));
                lines.add("    " + " ".repeat((int) d.getStartPosition() - start) + "^");
            }
        }
        String message = diags.isEmpty() ? "the snippet was rejected: " + source.strip()
                : diags.stream().map(d -> d.getMessage(Locale.ROOT)).collect(Collectors.joining("; "));
        return new CellError(message, lines);
    }

    private static CellError runtimeError(JShellException e, Snippet snippet) {
        if (e instanceof UnresolvedReferenceException u) {
            String message = "unresolved reference: " + u.getSnippet().source().strip()
                    + " cannot run until what it uses is declared";
            return new CellError(message, List.of(message));
        }
        List<String> lines = new ArrayList<>();
        String message = describe(e);
        lines.add(message);
        for (Throwable t = e; t != null; t = t.getCause()) {
            if (t != e) {
                lines.add("Caused by: " + describe(t));
            }
            for (StackTraceElement frame : t.getStackTrace()) {
                // The user's frames end where the kernel's reflective call into the snippet begins.
                if (frame.getClassName().startsWith("jdk.internal.reflect.")
                        || frame.getClassName().startsWith("java.lang.reflect.")) {
                    break;
                }
                lines.add("\tat " + frame);
            }
        }
        return new CellError(message, lines);
    }

    private static String describe(Throwable t) {
        String name = t instanceof EvalException ee ? ee.getExceptionClassName() : t.getClass().getName();
        return t.getMessage() == null ? name : name + ": " + t.getMessage();
    }

    @Override
    public List<String> formatError(Throwable e) {
        return e instanceof CellError c ? c.lines() : super.formatError(e);
    }

    @Override
    public DisplayData inspect(String code, int at, boolean extraDetail) {
        List<SourceCodeAnalysis.Documentation> docs = shell.sourceCodeAnalysis().documentation(code, at, extraDetail);
        if (docs.isEmpty()) {
            return null;
        }
        return new DisplayData(docs.stream()
                .map(d -> d.javadoc() == null ? d.signature() : d.signature() + "\n" + d.javadoc())
                .collect(Collectors.joining("\n\n")));
    }

    @Override
    public ReplacementOptions complete(String code, int at) {
        int[] anchor = new int[1];
        List<String> options = shell.sourceCodeAnalysis().completionSuggestions(code, at, anchor).stream()
                .map(SourceCodeAnalysis.Suggestion::continuation).distinct().toList();
        return new ReplacementOptions(options, anchor[0], at);
    }

    @Override
    public String isComplete(String code) {
        String remaining = code;
        while (!remaining.isBlank()) {
            CompletionInfo info = shell.sourceCodeAnalysis().analyzeCompletion(remaining);
            switch (info.completeness()) {
                case COMPLETE, COMPLETE_WITH_SEMI -> remaining = info.remaining();
                case EMPTY -> remaining = "";
                case DEFINITELY_INCOMPLETE, CONSIDERED_INCOMPLETE -> {
                    return "    ";
                }
                default -> {
                    return IS_COMPLETE_BAD;
                }
            }
        }
        return IS_COMPLETE_YES;
    }

    /**
     * Jupyter's interrupt: interrupt the cell first (so code that handles interrupts, like training,
     * sees the interrupt rather than its jobs failing under it, and cancels its own jobs), then cancel
     * the notebook's remaining Spark jobs (a plain action's job outlives its interrupted caller).
     */
    @Override
    public void interrupt() {
        control.stop();
        SparkSession.getDefaultSession().foreach(s -> {
            s.sparkContext().cancelAllJobs();
            return null;
        });
    }

    @Override
    public void onShutdown(boolean restarting) {
        super.onShutdown(restarting);
        control.stop();
    }

    /** Releases JShell when the kernel is used without a connection (tests). */
    public void close() {
        shell.close();
        uninstallNotebookKernel();
    }

    static final class Builder extends BaseKernelBuilder<Builder, KindlingKernel> {
        @Override
        public KindlingKernel build() {
            return new KindlingKernel(buildName(), buildVersion(), buildHistoryManager(),
                    buildJupyterIO(buildJupyterIOEncoding()), buildCommManager(), buildRenderer(), buildMagicsRegistry(),
                    buildErrorStyler(), new CellExecutionControl());
        }
    }

    /** The library's connection with every socket's inbound message size capped before it binds. */
    static final class CappedConnection extends JupyterConnection {
        CappedConnection(KernelConnectionProperties props) throws java.security.GeneralSecurityException {
            super(props);
            for (var socket : List.of(heartbeat, shell, control, stdin, iopub)) {
                socket.setMaxMsgSize(MAX_MESSAGE_BYTES);
            }
        }
    }
}
