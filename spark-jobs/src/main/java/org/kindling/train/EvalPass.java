package org.kindling.train;

import java.io.IOException;
import org.apache.hadoop.conf.Configuration;
import org.kindling.data.DatasetReader;
import org.kindling.models.Gpt;

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
        reader.seek(0);
        model.eval();
        double loss = 0;
        long predicted = 0;
        int read = 0;
        do {
            DatasetReader.Batch b = reader.next();
            loss += model.forward(DatasetSource.tokens(b), 0f);
            predicted += model.predicted();
            read++;
        } while (!reader.atEpochEnd() && read < maxBatches);
        return new Sums(loss, predicted, read);
    }

    @Override
    public void close() {
        reader.close();
    }
}
