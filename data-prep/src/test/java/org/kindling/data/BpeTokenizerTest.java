package org.kindling.data;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import ai.djl.huggingface.tokenizers.HuggingFaceTokenizer;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.stream.Stream;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class BpeTokenizerTest {
    /** Text with the cases byte-level BPE must get right: contractions, numbers, whitespace runs, emoji, CJK, accents. */
    static final List<String> SAMPLES = List.of(
            "Hello world! It's a test, isn't it? We'll see: they'd've done 12345 things in 2024.",
            "  leading spaces,\ttabs\t\tand\nnew\n\nlines   trailing   ",
            "Emoji 🎉🚀 and flags 🇫🇷, skin tones 👍🏽, ZWJ 👩‍💻.",
            "中文分词测试，日本語のテキスト、한국어 문장。",
            "Ünïcödé àccénts, ß, Ωmega, е (Cyrillic e), combining é.",
            "Code: for (int i = 0; i < n; i++) { sum += a[i] * b[i]; } // done",
            "Numbers 3.14159 and 1,000,000 and ½ and ٣ and 𝟙.",
            "Special <|endoftext|> in the middle<|endoftext|>and at the end<|endoftext|>",
            "Non-breaking\u00a0space and em\u2003space and \u3000ideographic space.",
            "'s 't 're 've 'm 'll 'd ' S 'T",
            "");

    static BpeTokenizer tok;
    @TempDir
    static Path dir;

    static String corpus() throws IOException {
        StringBuilder sb = new StringBuilder();
        for (String s : SAMPLES) {
            sb.append(s).append('\n');
        }
        try (Stream<Path> files = Files.walk(Path.of("..", "gpu-ops", "src", "main"))) {
            for (Path p : files.filter(f -> f.toString().endsWith(".java")).sorted().toList()) {
                sb.append(Files.readString(p));
            }
        }
        return sb.toString();
    }

    @BeforeAll
    static void trainOnProjectSources() throws IOException {
        Map<String, Long> counts = new HashMap<>();
        BpeTrainer.count(corpus(), counts);
        tok = BpeTrainer.train(counts, 1000, List.of(BpeTokenizer.END_OF_TEXT));
    }

    @Test
    void trainedVocabularyHasTheRequestedSizeWithEndOfTextLast() {
        assertEquals(1000, tok.vocabSize());
        assertEquals(999, tok.endOfText());
        assertEquals(BpeTokenizer.END_OF_TEXT, tok.token(999));
    }

    @Test
    void decodeInvertsEncodeForAnyValidText() {
        for (String s : SAMPLES) {
            assertEquals(s, tok.decode(tok.encode(s)));
        }
        SplittableRandom r = new SplittableRandom(7);
        for (int n = 0; n < 300; n++) {
            StringBuilder sb = new StringBuilder();
            int len = r.nextInt(40);
            for (int i = 0; i < len; i++) {
                int cp;
                do {
                    cp = switch (r.nextInt(5)) {
                        case 0 -> r.nextInt(0x80);
                        case 1 -> 0x80 + r.nextInt(0x780);
                        case 2 -> 0x4E00 + r.nextInt(0x5000);
                        case 3 -> 0x1F300 + r.nextInt(0x300);
                        default -> r.nextInt(0x110000);
                    };
                } while (cp >= 0xD800 && cp <= 0xDFFF);
                sb.appendCodePoint(cp);
            }
            String s = sb.toString();
            assertEquals(s, tok.decode(tok.encode(s)), "round trip of " + s.codePoints().mapToObj(Integer::toHexString).toList());
        }
    }

    @Test
    void encodingEqualsHuggingFaceTokenizers() throws Exception {
        Path file = dir.resolve("tokenizer.json");
        Files.writeString(file, tok.toJson());
        List<String> texts = new ArrayList<>(SAMPLES);
        for (String line : corpus().split("\n")) {
            texts.add(line);
        }
        try (HuggingFaceTokenizer hf = HuggingFaceTokenizer.builder().optTokenizerPath(file).optTruncation(false)
                .optAddSpecialTokens(false).build()) {
            int compared = 0;
            for (String t : texts) {
                long[] theirs = hf.encode(t).getIds();
                int[] ours = tok.encode(t);
                int[] want = new int[theirs.length];
                for (int i = 0; i < theirs.length; i++) {
                    want[i] = (int) theirs[i];
                }
                assertArrayEquals(want, ours, "ids of \"" + t + "\"");
                compared++;
            }
            assertTrue(compared > 500, "compared " + compared + " texts");
        }
    }

    @Test
    void tokenizerJsonRoundTripsAndIdentifiesItself() {
        BpeTokenizer again = BpeTokenizer.fromJson(tok.toJson(), "tokenizer.json");
        assertEquals(tok.toJson(), again.toJson());
        assertEquals(tok.sha256(), again.sha256());
        for (String s : SAMPLES) {
            assertArrayEquals(tok.encode(s), again.encode(s));
        }
    }

    @Test
    void trainingIsDeterministic() throws IOException {
        Map<String, Long> counts = new HashMap<>();
        BpeTrainer.count(corpus(), counts);
        Map<String, Long> reordered = new java.util.TreeMap<>(java.util.Comparator.reverseOrder());
        reordered.putAll(counts);
        assertEquals(tok.toJson(), BpeTrainer.train(reordered, 1000, List.of(BpeTokenizer.END_OF_TEXT)).toJson());
    }

    @Test
    void mergesFollowPairFrequency() {
        Map<String, Long> counts = Map.of("aaab", 5L, "ab", 3L, "b", 1L);
        BpeTokenizer t = BpeTrainer.train(counts, 256 + 2 + 1, List.of(BpeTokenizer.END_OF_TEXT));
        // (a,a) occurs 2×5 = 10 times, (a,b) 5 + 3 = 8: "aa" is learned first, then "ab" (8 beats "aa a" with 5).
        assertEquals(List.of("aa", "ab"), List.of(t.token(256), t.token(257)));
        assertEquals(2, t.encode("aaab").length);
    }

    @Test
    void badTokenizerFilesNameTheFileAndTheProblem() {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> BpeTokenizer.fromJson("{", "t.json"));
        assertTrue(e.getMessage().startsWith("t.json: not valid JSON"), e.getMessage());
        e = assertThrows(IllegalArgumentException.class, () -> BpeTokenizer.fromJson("{\"model\": {\"type\": \"WordPiece\"}}", "t.json"));
        assertTrue(e.getMessage().contains("not a BPE tokenizer.json"), e.getMessage());
        String json = tok.toJson();
        String withNormalizer = json.replace("\"normalizer\" : null", "\"normalizer\" : {\"type\": \"NFC\"}");
        e = assertThrows(IllegalArgumentException.class, () -> BpeTokenizer.fromJson(withNormalizer, "t.json"));
        assertTrue(e.getMessage().contains("normalizers are not supported"), e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> tok.decode(new int[] {5000}));
    }

    @Test
    void pieceCacheStaysBoundedAndKeepsAPieceInUseAcrossTurnovers() {
        BpeTokenizer.PieceCache cache = new BpeTokenizer.PieceCache();
        int[] hot = {1, 2};
        cache.put("hot", hot);
        for (int i = 0; i < 3 * BpeTokenizer.CACHE_LIMIT; i++) {
            cache.put("cold" + i, new int[] {i});
            if (i % 1000 == 0) {
                assertSame(hot, cache.get("hot"));
            }
            assertTrue(cache.size() <= 2 * BpeTokenizer.CACHE_LIMIT, "size " + cache.size());
        }
        assertSame(hot, cache.get("hot"));
        assertNull(cache.get("cold0"), "the oldest unused piece is dropped");
        assertEquals(3 * BpeTokenizer.CACHE_LIMIT - 1, cache.get("cold" + (3 * BpeTokenizer.CACHE_LIMIT - 1))[0]);
    }
}
