package org.kindling.ops.cpu;

/**
 * An in-place radix-2 complex FFT of one power-of-two size in fp32: the real and imaginary parts
 * lie in one array at two offsets. Twiddles are computed in double and rounded once, so the
 * transform's error stays at a few ulps times log₂ n. Plain loops in a fixed order: deterministic.
 */
final class Fft {
    final int n;
    /** cos and −sin of 2πj/n for j < n/2: the forward twiddles. */
    private final float[] cos;
    private final float[] sin;
    private final int[] bitReversed;

    Fft(int n) {
        if (n < 1 || Integer.bitCount(n) != 1) {
            throw new IllegalArgumentException("FFT size must be a power of two, got " + n);
        }
        this.n = n;
        cos = new float[Math.max(1, n / 2)];
        sin = new float[Math.max(1, n / 2)];
        for (int j = 0; j < n / 2; j++) {
            double a = 2 * Math.PI * j / n;
            cos[j] = (float) Math.cos(a);
            sin[j] = (float) -Math.sin(a);
        }
        bitReversed = new int[n];
        int bits = Integer.numberOfTrailingZeros(n);
        for (int i = 0; i < n; i++) {
            bitReversed[i] = bits == 0 ? 0 : Integer.reverse(i) >>> (32 - bits);
        }
    }

    /** The smallest power of two ≥ 2·len − 1: a linear convolution of two len-long signals fits without wrapping. */
    static int sizeFor(int len) {
        int need = Math.max(1, 2 * len - 1);
        return need == 1 ? 1 : Integer.highestOneBit(need - 1) << 1;
    }

    /** Transforms a[re..re+n) + i·a[im..im+n) in place; the inverse is unscaled (a round trip multiplies by n). */
    void transform(float[] a, int re, int im, boolean inverse) {
        for (int i = 0; i < n; i++) {
            int j = bitReversed[i];
            if (i < j) {
                float t = a[re + i];
                a[re + i] = a[re + j];
                a[re + j] = t;
                t = a[im + i];
                a[im + i] = a[im + j];
                a[im + j] = t;
            }
        }
        float sign = inverse ? -1f : 1f;
        for (int half = 1, step = n / 2; half < n; half <<= 1, step >>= 1) {
            for (int j = 0; j < half; j++) {
                float wr = cos[j * step];
                float wi = sign * sin[j * step];
                for (int p = re + j, q = im + j; p < re + n; p += 2 * half, q += 2 * half) {
                    float xr = a[p + half] * wr - a[q + half] * wi;
                    float xi = a[p + half] * wi + a[q + half] * wr;
                    a[p + half] = a[p] - xr;
                    a[q + half] = a[q] - xi;
                    a[p] += xr;
                    a[q] += xi;
                }
            }
        }
    }
}
