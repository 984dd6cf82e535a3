package org.kindling.models.mixers.linear;

import java.util.SplittableRandom;
import org.kindling.models.nn.Init;
import org.kindling.models.nn.LayerContext;
import org.kindling.models.nn.Params;
import org.kindling.ops.Backend;
import org.kindling.ops.Seeds;
import org.kindling.ops.Tensor;
import org.kindling.ops.UnaryOp;

/**
 * The non-negative feature map φ that linear attention applies to queries and keys, per head:
 * x [T, NH·HS] → φ(x) [T, NH·F].
 */
interface FeatureMap extends AutoCloseable {
    /** F, the features per head. */
    int features();

    /**
     * phi = φ(x). x is the caller's own buffer and may be rescaled in place: {@link #backward}
     * then receives it as this call left it.
     */
    void forward(Tensor phi, Tensor x, boolean query);

    /** dx = ∂L/∂x (overwritten) for upstream dphi, given phi and x as {@link #forward} left them. */
    void backward(Tensor dx, Tensor dphi, Tensor phi, Tensor x, boolean query);

    /** Called before each optimizer step. */
    default void startStep(long step) {
    }

    /** Frees what the map holds beside its parameters. */
    @Override
    default void close() {
    }

    /** φ = elu + 1 elementwise (Katharopoulos et al.): F = HS. */
    record EluPlusOne(int headDim) implements FeatureMap {
        @Override
        public int features() {
            return headDim;
        }

        @Override
        public void forward(Tensor phi, Tensor x, boolean query) {
            x.device().backend().unary(UnaryOp.ELU_PLUS_ONE, phi, x);
        }

        @Override
        public void backward(Tensor dx, Tensor dphi, Tensor phi, Tensor x, boolean query) {
            Backend be = x.device().backend();
            be.fill(dx, 0f);
            be.unaryBackward(UnaryOp.ELU_PLUS_ONE, dx, dphi, x);
        }
    }

    /**
     * FAVOR+ (Choromanski et al.): positive orthogonal random features w [M, HS], shared by the
     * heads, a fixed tensor redrawn every {@code redraw} optimizer steps. Draw r of layer l comes
     * from {@code Seeds.derive(seed, l, r)}, so a resumed run holds (from its checkpoint) and later
     * draws exactly what an uninterrupted one does.
     */
    final class Favor implements FeatureMap {
        private final Params.Handle w;
        private final long seed;
        private final int layer;
        private final int headDim;
        private final int features;
        private final int redraw;
        private final int heads;
        /** HS^(−1/4) on q and k, so φ(q)·φ(k) estimates exp(q·k/√HS), softmax attention's logits. */
        private final float scale;

        Favor(LayerContext ctx, int heads, int headDim, int features, int redraw) {
            this.seed = ctx.seed();
            this.layer = ctx.layer();
            this.heads = heads;
            this.headDim = headDim;
            this.features = features;
            this.redraw = redraw;
            this.scale = (float) Math.pow(headDim, -0.25);
            // The model's init stream is not used: the features depend on (seed, layer, draw) alone.
            Init init = (dst, off, shape, rnd) -> {
                float[] f = draw(0);
                System.arraycopy(f, 0, dst, off, f.length);
            };
            this.w = ctx.params().fixed(ctx.child("features"), init, features, headDim);
        }

        @Override
        public int features() {
            return features;
        }

        @Override
        public void startStep(long step) {
            if (redraw > 0 && step > 0 && step % redraw == 0) {
                w.value().copyFrom(draw(step / redraw));
            }
        }

        /** Draw number {@code index} of this layer's features, [M, HS] row-major. */
        float[] draw(long index) {
            return orthogonalGaussian(new SplittableRandom(Seeds.derive(seed, layer, index)), features, headDim);
        }

        @Override
        public void forward(Tensor phi, Tensor x, boolean query) {
            Backend be = x.device().backend();
            be.affine(x, x, scale, 0f);
            be.favorFeatures(phi, x, w.value(), heads, query);
        }

        @Override
        public void backward(Tensor dx, Tensor dphi, Tensor phi, Tensor x, boolean query) {
            Backend be = x.device().backend();
            be.fill(dx, 0f);
            be.favorFeaturesBackward(dx, dphi, phi, x, w.value(), heads, query);
            be.affine(dx, dx, scale, 0f);
        }

        /**
         * m rows of dimension d in blocks of d mutually orthogonal rows (Gram–Schmidt on Gaussian
         * rows, in double; the last block keeps its first m mod d), each row rescaled to the norm
         * of an independent Gaussian vector, so every row is marginally N(0, I) as the unbiased
         * estimate needs, while orthogonality lowers its variance.
         */
        static float[] orthogonalGaussian(SplittableRandom rnd, int m, int d) {
            float[] out = new float[m * d];
            double[][] block = new double[d][d];
            for (int start = 0; start < m; start += d) {
                int rows = Math.min(d, m - start);
                for (int i = 0; i < rows; i++) {
                    double norm;
                    do {
                        for (int j = 0; j < d; j++) {
                            block[i][j] = Init.gaussian(rnd);
                        }
                        for (int p = 0; p < i; p++) {
                            double along = dot(block[i], block[p]);
                            for (int j = 0; j < d; j++) {
                                block[i][j] -= along * block[p][j];
                            }
                        }
                        norm = Math.sqrt(dot(block[i], block[i]));
                    } while (!(norm > 1e-6)); // a draw (nearly) inside the span of the earlier rows: draw again
                    for (int j = 0; j < d; j++) {
                        block[i][j] /= norm;
                    }
                }
                for (int i = 0; i < rows; i++) {
                    double length = Math.sqrt(chiSquare(rnd, d));
                    for (int j = 0; j < d; j++) {
                        out[(start + i) * d + j] = (float) (block[i][j] * length);
                    }
                }
            }
            return out;
        }

        /** |g|² of a fresh Gaussian vector of dimension d. */
        private static double chiSquare(SplittableRandom rnd, int d) {
            double s = 0;
            for (int j = 0; j < d; j++) {
                double g = Init.gaussian(rnd);
                s += g * g;
            }
            return s;
        }

        private static double dot(double[] a, double[] b) {
            double s = 0;
            for (int j = 0; j < a.length; j++) {
                s += a[j] * b[j];
            }
            return s;
        }
    }
}
