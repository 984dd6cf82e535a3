package org.kindling.models.mixers.linear;

import org.kindling.ops.Backend;
import org.kindling.ops.Tensor;

/**
 * A learned spectral distribution other than the Gaussian mixture: it makes each head's K
 * frequencies from its parameters and turns their gradient into parameter gradients. Frequencies
 * of head h sit in rows [h·stride, h·stride + K) of a [NH·stride, HS] matrix (the RKS layout
 * repeats them in the rows after).
 */
interface Spectrum extends AutoCloseable {
    /** Writes every head's K frequencies into {@code omega}. */
    void frequencies(Backend be, Tensor omega, int stride);

    /**
     * Adds (+=) the parameter gradients for dΩ in the same layout; called after {@link
     * #frequencies} of the same step, whose intermediates it reuses. It may overwrite {@code dOmega}.
     */
    void backward(Backend be, Tensor dOmega, int stride);

    @Override
    void close();
}
