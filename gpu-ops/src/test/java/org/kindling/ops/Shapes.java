package org.kindling.ops;

import java.util.stream.Stream;
import org.junit.jupiter.params.provider.Arguments;

/** Row × column shapes for row-wise kernels, built from {@link Check#SIZES}. */
final class Shapes {
    private Shapes() {
    }

    /** (N, C) pairs: every awkward size as rows and as columns, plus one large enough to run on every thread. */
    static Stream<Arguments> rowsCols() {
        return Stream.of(Arguments.of(1, 1), Arguments.of(1, 1025), Arguments.of(7, 59), Arguments.of(97, 7),
                Arguments.of(59, 97), Arguments.of(1025, 59), Arguments.of(97, 1025));
    }
}
