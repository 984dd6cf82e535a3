package org.kindling.notebook;

import java.awt.image.RenderedImage;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.Base64;
import javax.imageio.ImageIO;
import org.dflib.jjava.jupyter.kernel.BaseKernel;
import org.dflib.jjava.jupyter.kernel.display.DisplayData;
import org.knowm.xchart.BitmapEncoder;
import org.knowm.xchart.internal.chartpart.Chart;

/**
 * Rich output from a notebook cell: each call shows one display_data output under the running cell.
 * Outside a running Kindling kernel the calls fail with an IllegalStateException.
 */
public final class Display {
    private Display() {
    }

    /** Shows an image as PNG. */
    public static void png(RenderedImage image) {
        show(pngData(image));
    }

    /** Shows an SVG document ({@code <svg …>…</svg>}). */
    public static void svg(String svg) {
        show(svgData(svg));
    }

    /** Shows an HTML fragment. */
    public static void html(String html) {
        show(htmlData(html));
    }

    /** Shows an XChart chart (XYChart, CategoryChart, …) as PNG at its own width and height. */
    public static void chart(Chart<?, ?> chart) {
        png(BitmapEncoder.getBufferedImage(chart));
    }

    static DisplayData pngData(RenderedImage image) {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        try {
            if (!ImageIO.write(image, "png", bytes)) {
                throw new IllegalArgumentException("no PNG writer for this image");
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        DisplayData data = new DisplayData("PNG image, " + image.getWidth() + "x" + image.getHeight());
        data.putData("image/png", Base64.getEncoder().encodeToString(bytes.toByteArray()));
        return data;
    }

    static DisplayData svgData(String svg) {
        if (!svg.contains("<svg")) {
            throw new IllegalArgumentException("not an SVG document (no <svg element): "
                    + svg.substring(0, Math.min(40, svg.length())));
        }
        DisplayData data = new DisplayData("SVG image");
        data.putSVG(svg);
        return data;
    }

    static DisplayData htmlData(String html) {
        DisplayData data = new DisplayData("HTML");
        data.putHTML(html);
        return data;
    }

    private static void show(DisplayData data) {
        BaseKernel kernel;
        try {
            kernel = BaseKernel.notebookKernel();
        } catch (NullPointerException e) {
            throw new IllegalStateException("Display needs a running Kindling notebook kernel (bin/kindling notebook)");
        }
        kernel.display(data);
    }
}
