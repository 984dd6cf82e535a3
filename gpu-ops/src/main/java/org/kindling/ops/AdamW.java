package org.kindling.ops;

/**
 * One AdamW update (Loshchilov &amp; Hutter, decoupled weight decay), as PyTorch's {@code AdamW}:
 * {@code p ← p·(1 − lr·wd) − lr·m̂/(√v̂ + eps)} with bias-corrected moments at step {@code t}.
 * {@code gradScale} multiplies every gradient first, so global-norm clipping costs no extra pass.
 */
public record AdamW(float lr, float beta1, float beta2, float eps, float weightDecay, int step, float gradScale) {

    public AdamW {
        if (!(lr >= 0) || !Float.isFinite(lr)) {
            throw new IllegalArgumentException("AdamW lr must be finite and >= 0, got " + lr);
        }
        if (!(beta1 >= 0 && beta1 < 1)) {
            throw new IllegalArgumentException("AdamW beta1 must be in [0, 1), got " + beta1);
        }
        if (!(beta2 >= 0 && beta2 < 1)) {
            throw new IllegalArgumentException("AdamW beta2 must be in [0, 1), got " + beta2);
        }
        if (!(eps > 0)) {
            throw new IllegalArgumentException("AdamW eps must be > 0, got " + eps);
        }
        if (!(weightDecay >= 0)) {
            throw new IllegalArgumentException("AdamW weight decay must be >= 0, got " + weightDecay);
        }
        if (step < 1) {
            throw new IllegalArgumentException("AdamW step counts from 1, got " + step);
        }
        if (!Float.isFinite(gradScale)) {
            throw new IllegalArgumentException("AdamW gradient scale must be finite, got " + gradScale);
        }
    }

    /** The weight-decay factor 1 − lr·wd that multiplies every parameter. */
    public float decay() {
        return 1f - lr * weightDecay;
    }

    /** lr / (1 − β1^t): the learning rate with the first moment's bias correction folded in. */
    public float stepSize() {
        return (float) (lr / (1.0 - Math.pow(beta1, step)));
    }

    /** √(1 − β2^t), which divides √v to correct the second moment's bias. */
    public float bc2Sqrt() {
        return (float) Math.sqrt(1.0 - Math.pow(beta2, step));
    }
}
