package org.kindling.notebook;

import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.util.concurrent.atomic.AtomicReference;
import jdk.jshell.execution.DirectExecutionControl;
import jdk.jshell.spi.ExecutionControl;
import jdk.jshell.spi.ExecutionControlProvider;
import jdk.jshell.spi.ExecutionEnv;

/**
 * Runs each JShell snippet in this JVM (so Spark and Kindling objects live beside the kernel) on a
 * thread of its own, which {@link #stop()} can interrupt: JShell's LocalExecutionControl only knows
 * Thread.stop, which leaves Spark's job waits no chance to cancel cleanly.
 */
final class CellExecutionControl extends DirectExecutionControl {
    /** How long an interrupted cell gets to finish on its own before its thread is stopped. */
    /** Long enough for code that handles the interrupt to clean up (training waits for its tasks to stop between steps). */
    static final long STOP_GRACE_MS = 10_000;

    private final AtomicReference<Thread> running = new AtomicReference<>();

    @Override
    protected String invoke(Method doit) throws Exception {
        AtomicReference<Object> value = new AtomicReference<>();
        AtomicReference<Throwable> failure = new AtomicReference<>();
        Thread cell = new Thread(() -> {
            try {
                value.set(doit.invoke(null));
            } catch (InvocationTargetException e) {
                failure.set(e.getCause());
            } catch (Throwable e) {
                failure.set(e);
            }
        }, "notebook-cell");
        cell.setDaemon(true);
        running.set(cell);
        try {
            cell.start();
            cell.join();
        } finally {
            running.set(null);
        }
        Throwable f = failure.get();
        if (f instanceof ThreadDeath) {
            f = new InterruptedException("the cell was interrupted and did not stop within "
                    + STOP_GRACE_MS + " ms, so its thread was stopped");
        }
        if (f != null) {
            // DirectExecutionControl turns this into the snippet's exception, unresolved references included.
            throw new InvocationTargetException(f);
        }
        return valueString(value.get());
    }

    /**
     * Interrupts the running cell; one that ignores interrupts (a busy loop) is stopped after
     * {@link #STOP_GRACE_MS}, from a helper thread so the kernel answers the interrupt request at once.
     */
    @Override
    @SuppressWarnings("deprecation")
    public void stop() {
        Thread cell = running.get();
        if (cell == null) {
            return;
        }
        cell.interrupt();
        Thread stopper = new Thread(() -> {
            try {
                cell.join(STOP_GRACE_MS);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                return;
            }
            if (cell.isAlive() && running.get() == cell) {
                try {
                    cell.stop();
                } catch (UnsupportedOperationException e) {
                    // Java 20+ removed Thread.stop: the interrupt is all a busy cell gets there.
                    System.err.println("the cell ignores interrupts and this Java cannot stop threads: restart the kernel");
                }
            }
        }, "notebook-cell-stopper");
        stopper.setDaemon(true);
        stopper.start();
    }

    /** Hands JShell this execution control. */
    static final class Provider implements ExecutionControlProvider {
        private final CellExecutionControl control;

        Provider(CellExecutionControl control) {
            this.control = control;
        }

        @Override
        public String name() {
            return "kindling-cell";
        }

        @Override
        public ExecutionControl generate(ExecutionEnv env, java.util.Map<String, String> parameters) {
            return control;
        }
    }
}
