package org.kindling.models.train;

import org.kindling.models.nn.Param;
import org.kindling.models.nn.Params;

/**
 * How ZeRO-1 splits the flat parameter buffer among the workers: worker {@code r} owns elements
 * [{@code bounds[r]}, {@code bounds[r+1]}) — whole parameters, contiguous in the buffer's layout,
 * balanced by element count. The split depends only on the model and the world size, so every
 * worker computes the same one; a worker may own nothing when there are more workers than parameters.
 */
public final class ZeroShards {
    private ZeroShards() {
    }

    /** The {@code world + 1} shard bounds of {@code params} over {@code world} workers. */
    public static int[] bounds(Params params, int world) {
        if (world < 1) {
            throw new IllegalArgumentException("need at least 1 worker, got " + world);
        }
        int base = params.values().offset();
        int[] starts = params.list().stream().mapToInt(p -> p.value().offset() - base).sorted().toArray();
        int n = params.count();
        int[] bounds = new int[world + 1];
        bounds[world] = n;
        int next = 0; // the first start a later bound may take, so bounds never decrease
        for (int r = 1; r < world; r++) {
            long target = (long) n * r / world;
            // The parameter start nearest the even split, taking the earlier one on a tie.
            int best = n;
            for (int i = next; i < starts.length; i++) {
                if (Math.abs(starts[i] - target) < Math.abs(best - target)) {
                    best = starts[i];
                    next = i;
                }
                if (starts[i] >= target) {
                    break;
                }
            }
            bounds[r] = Math.max(best, bounds[r - 1]);
        }
        return bounds;
    }

    /** Whether parameter {@code p} of {@code params} lies in [{@code from}, {@code to}) of the flat buffer. */
    static boolean owns(Params params, Param p, int from, int to) {
        int o = p.value().offset() - params.values().offset();
        return o >= from && o < to;
    }
}
