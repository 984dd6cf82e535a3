package org.kindling.notebook;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.awt.image.BufferedImage;
import java.io.ByteArrayInputStream;
import java.nio.file.Path;
import java.util.Base64;
import java.util.List;
import java.util.Map;
import javax.imageio.ImageIO;
import org.dflib.jjava.jupyter.kernel.display.mime.MIMEType;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class DisplayTest {
    @Test
    void pngIsTheImageBase64Encoded() throws Exception {
        BufferedImage image = new BufferedImage(5, 3, BufferedImage.TYPE_INT_RGB);
        image.setRGB(2, 1, 0xff0000);
        String b64 = (String) Display.pngData(image).getData(MIMEType.parse("image/png"));
        BufferedImage back = ImageIO.read(new ByteArrayInputStream(Base64.getDecoder().decode(b64)));
        assertEquals(5, back.getWidth());
        assertEquals(3, back.getHeight());
        assertEquals(0xff0000, back.getRGB(2, 1) & 0xffffff);
    }

    @Test
    void svgAndHtmlKeepTheirText() {
        String svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"4\" height=\"4\"/>";
        assertEquals(svg, Display.svgData(svg).getData(MIMEType.parse("image/svg+xml")));
        assertEquals("<b>x</b>", Display.htmlData("<b>x</b>").getData(MIMEType.parse("text/html")));
        assertThrows(IllegalArgumentException.class, () -> Display.svgData("<html/>"));
    }

    @Test
    void outsideAKernelDisplayFailsClearly() {
        var e = assertThrows(IllegalStateException.class, () -> Display.html("<b>x</b>"));
        assertTrue(e.getMessage().contains("kernel"), e.getMessage());
    }

    @Test
    void kernelSpecStartsThisKernelOnAbsoluteClasspathWithTheConnectionFile(@TempDir Path dataDir) throws Exception {
        KernelSpec spec = KernelSpec.forThisJvm(List.of("--add-modules=jdk.incubator.vector"), Map.of("OPENBLAS_NUM_THREADS", "1"));
        Path dir = spec.install(dataDir);
        var json = new ObjectMapper().readTree(dir.resolve("kernel.json").toFile());
        assertEquals("Kindling (Java)", json.get("display_name").asText());
        assertEquals("java", json.get("language").asText());
        assertEquals("message", json.get("interrupt_mode").asText());
        assertEquals("1", json.get("env").get("OPENBLAS_NUM_THREADS").asText());
        var argv = json.get("argv");
        assertTrue(argv.get(0).asText().endsWith("/bin/java"), argv.toString());
        assertEquals("--add-modules=jdk.incubator.vector", argv.get(1).asText());
        assertEquals(KindlingKernel.class.getName(), argv.get(argv.size() - 2).asText());
        assertEquals("{connection_file}", argv.get(argv.size() - 1).asText());
        String cp = argv.get(argv.size() - 3).asText();
        for (String entry : cp.split(":")) {
            assertTrue(Path.of(entry).isAbsolute(), entry);
        }
    }
}
