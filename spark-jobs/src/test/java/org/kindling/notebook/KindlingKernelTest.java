package org.kindling.notebook;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.dflib.jjava.jupyter.kernel.BaseKernel;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/** JShell in the kernel, driven without Jupyter: values, state across cells, errors, completion, interrupts. */
class KindlingKernelTest {
    private static KindlingKernel kernel;

    @BeforeAll
    static void start() {
        kernel = KindlingKernel.create();
    }

    @AfterAll
    static void stop() {
        kernel.close();
    }

    @Test
    void lastExpressionIsTheCellsValueAndStateCarriesAcrossCells() {
        assertNull(kernel.evalRaw("int kernelTestX = 6;"));
        assertEquals("42", kernel.evalRaw("int y = kernelTestX * 7;\n// a comment\ny"));
        assertEquals("\"kindling\"", kernel.evalRaw("\"kind\" + \"ling\""));
        assertNull(kernel.evalRaw("System.out.print(\"\")"), "a void call has no value");
    }

    @Test
    void kindlingAndSparkClassesCompileAndRunInTheKernelsJvm() {
        assertEquals("true", kernel.evalRaw("org.kindling.cli.BuildInfo.version() != null"));
        assertEquals("\"org.apache.spark.sql.SparkSession\"", kernel.evalRaw("org.apache.spark.sql.SparkSession.class.getName()"));
        // The same class object as the kernel's: snippets see this JVM's classes, not copies.
        assertEquals("true", kernel.evalRaw("Display.class.getClassLoader() == ClassLoader.getSystemClassLoader()"));
    }

    @Test
    void compileErrorCarriesTheDiagnosticAndStopsTheCell() {
        CellError e = assertThrows(CellError.class, () -> kernel.evalRaw("int afterError = 1;\nint bad = \"text\";\nint never = 2;"));
        assertTrue(e.getMessage().contains("incompatible types"), e.getMessage());
        assertTrue(String.join("\n", e.lines()).contains("int bad = \"text\";"), e.lines().toString());
        assertEquals("1", kernel.evalRaw("afterError"));
        assertThrows(CellError.class, () -> kernel.evalRaw("never"), "the cell stopped at the error");
        CellError unclosed = assertThrows(CellError.class, () -> kernel.evalRaw("void f() {"));
        assertTrue(unclosed.getMessage().contains("end of file"), unclosed.getMessage());
    }

    @Test
    void exceptionShowsItsClassMessageAndTheUsersFrames() {
        kernel.evalRaw("void failing() { throw new IllegalStateException(\"boom\", new java.io.IOException(\"disk\")); }");
        CellError e = assertThrows(CellError.class, () -> kernel.evalRaw("failing();"));
        assertEquals("java.lang.IllegalStateException: boom", e.getMessage());
        String trace = String.join("\n", e.lines());
        assertTrue(trace.contains("failing"), trace);
        assertTrue(trace.contains("Caused by: java.io.IOException: disk"), trace);
        assertTrue(!trace.contains("org.kindling.notebook"), "the kernel's own frames are left out: " + trace);
    }

    @Test
    void completionAndCompletenessComeFromJShell() {
        var options = kernel.complete("String s = \"x\"; s.toUpperC", 26);
        assertTrue(options.getReplacements().contains("toUpperCase("), options.getReplacements().toString());
        assertEquals(BaseKernel.IS_COMPLETE_YES, kernel.isComplete("int a = 1;"));
        assertEquals("    ", kernel.isComplete("for (int i = 0; i < 3; i++) {"));
    }

    @Test
    void interruptEndsASleepingCellAndStopsABusyOne() throws Exception {
        CompletableFuture<Object> sleeping = CompletableFuture.supplyAsync(() -> kernel.evalRaw("Thread.sleep(60_000);"));
        CellError slept = awaitInterrupted(sleeping);
        assertTrue(slept.getMessage().startsWith("java.lang.InterruptedException"), slept.getMessage());

        CompletableFuture<Object> busy = CompletableFuture.supplyAsync(() -> kernel.evalRaw("long n = 0; while (true) { n++; }"));
        CellError stopped = awaitInterrupted(busy);
        assertTrue(stopped.getMessage().contains("was stopped"), stopped.getMessage());
        assertEquals("3", kernel.evalRaw("1 + 2"), "the kernel runs cells after an interrupt");
    }

    /** Interrupts the cell once it runs; returns the error it ended with. */
    private static CellError awaitInterrupted(CompletableFuture<Object> cell) throws Exception {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
        while (!cell.isDone() && System.nanoTime() < deadline) {
            Thread.sleep(300);
            kernel.interrupt();
            try {
                cell.get(200, TimeUnit.MILLISECONDS);
            } catch (java.util.concurrent.TimeoutException e) {
                continue;
            } catch (ExecutionException e) {
                return (CellError) e.getCause();
            }
        }
        Object value = cell.isDone() ? cell.get() : null;
        throw new AssertionError("the cell did not end with an interrupt within 20 s (value " + value + ")");
    }
}
