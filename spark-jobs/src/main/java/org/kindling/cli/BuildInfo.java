package org.kindling.cli;

import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.util.Properties;
import picocli.CommandLine;

/** Build facts stamped into the jar by Maven resource filtering. */
public final class BuildInfo implements CommandLine.IVersionProvider {
    private static final Properties PROPS = load();

    private static Properties load() {
        Properties p = new Properties();
        try (InputStream in = BuildInfo.class.getResourceAsStream("build.properties")) {
            if (in == null) {
                throw new IllegalStateException("build.properties is missing from the kindling jar");
            }
            p.load(in);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return p;
    }

    public static String version() {
        return PROPS.getProperty("version");
    }

    public static String sparkVersion() {
        return PROPS.getProperty("spark.version");
    }

    /** The JVM flags bin/kindling starts Java with (Spark's module opens and the Vector API). */
    public static String jvmFlags() {
        return PROPS.getProperty("jvm.flags");
    }

    @Override
    public String[] getVersion() {
        return new String[] {"kindling " + version()};
    }
}
