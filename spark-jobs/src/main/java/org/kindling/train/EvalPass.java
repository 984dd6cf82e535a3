package org.kindling.train;

import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.function.Function;
import org.apache.hadoop.conf.Configuration;
import org.kindling.data.DatasetReader;
import org.kindling.models.Gpt;
import org.kindling.models.data.TokenBatch;
import org.kindling.models.train.DataParallel;

/**
 * Next-token loss of a model over the first batches of one worker's slice of a prepared dataset,
 * read from the start every time: {@code kindling eval} runs one over the whole dataset, training
 * one per worker every eval_interval steps. It runs forward passes in evaluation mode (no dropout,
 * no router jitter, no auxiliary losses or layer metrics, no communication) and draws nothing from
 * any random stream, so evaluating never changes what training does next.
 */
public final class EvalPass implements AutoCloseable {
    /** The data order's seed: every pass reads the batches {@code kindling eval} reads with one worker. */
    static final long SEED = 0;

    /** Summed loss over the predicted tokens of the batches read. */
    public record Sums(double loss, long predicted, int batches) {
        public double mean() {
            return loss / Math.max(1, predicted);
        }
    }

    private final DatasetReader reader;
    private final int maxBatches;

    /**
     * Opens worker {@code rank} of {@code world}'s slice of the dataset at {@code data}, in batches of
     * at most {@code batchTokens} tokens, of which a pass reads at most {@code maxBatches}.
     */
    public EvalPass(String data, Configuration conf, int rank, int world, int batchTokens, int maxBatches) throws IOException {
        if (maxBatches < 1) {
            throw new IllegalArgumentException("an evaluation reads at least 1 batch, got " + maxBatches);
        }
        this.reader = new DatasetReader(data, conf, SEED, rank, world, batchTokens);
        this.maxBatches = maxBatches;
    }

    /** The sha256 of the tokenizer the dataset was made with. */
    public String tokenizerSha256() {
        return reader.info().tokenizerSha256();
    }

    /**
     * Refuses a dataset made with another tokenizer than the run's: its ids would mean other text.
     *
     * @param runTokenizerSha256 the sha256 of the run's tokenizer
     * @param what the dataset, as messages name it
     * @param runTokenizer the run's tokenizer file, as messages name it
     */
    public void checkTokenizer(String runTokenizerSha256, String what, String runTokenizer) {
        if (!tokenizerSha256().equals(runTokenizerSha256)) {
            throw new IllegalArgumentException(what + " was tokenized with another tokenizer than the run's " + runTokenizer);
        }
    }

    /** The model's summed loss over the first batches of the slice (up to where its epoch ends); leaves the model in evaluation mode. */
    public Sums run(Gpt model) throws IOException {
        return run(1, round -> List.of(forward(model, round.get(0))));
    }

    /**
     * The same over a group's replicas (bit-identical models): each round reads a batch per
     * replica and each replica evaluates its own on its thread; the sums are added in batch
     * order, so the result is that of {@link #run(Gpt)} on any one of them. Leaves every replica
     * in evaluation mode.
     */
    public Sums run(DataParallel group) throws IOException {
        List<DataParallel.Replica> replicas = group.replicas();
        return run(replicas.size(), round -> group.onEach(r -> r < round.size() ? forward(replicas.get(r).model(), round.get(r))
                : null));
    }

    /**
     * The same with {@code evaluate} giving each batch's {summed loss, predicted tokens}, one batch
     * at a time in order: a pipeline stage's share of the pass (zeros on all but the last stage).
     */
    public Sums run(Function<TokenBatch, double[]> evaluate) throws IOException {
        return run(1, round -> {
            double[] sums = evaluate.apply(round.get(0));
            return List.of(new Sums(sums[0], (long) sums[1], 1));
        });
    }

    /** Reads the pass's batches {@code width} at a time and adds up what {@code evaluate} gives for each, in batch order. */
    private Sums run(int width, Function<List<TokenBatch>, List<Sums>> evaluate) throws IOException {
        reader.seek(0);
        double loss = 0;
        long predicted = 0;
        int read = 0;
        boolean end;
        do {
            List<TokenBatch> round = new ArrayList<>();
            do {
                round.add(DatasetSource.tokens(reader.next()));
                read++;
                end = reader.atEpochEnd() || read >= maxBatches;
            } while (!end && round.size() < width);
            List<Sums> sums = evaluate.apply(round);
            for (int i = 0; i < round.size(); i++) {
                loss += sums.get(i).loss();
                predicted += sums.get(i).predicted();
            }
        } while (!end);
        return new Sums(loss, predicted, read);
    }

    private static Sums forward(Gpt model, TokenBatch batch) {
        model.eval();
        double loss = model.forward(batch, 0f);
        return new Sums(loss, model.predicted(), 1);
    }

    @Override
    public void close() {
        reader.close();
    }
}
