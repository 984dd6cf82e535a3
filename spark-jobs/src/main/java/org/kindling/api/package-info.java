/**
 * The Java API: {@link org.kindling.api.KindlingApi}'s builders prepare, train, evaluate, sample and
 * export as the {@code kindling} commands do (the commands are thin layers over them), returning
 * records: {@link org.kindling.api.PreparedData}, {@link org.kindling.api.TrainedRun} (with its
 * metrics as {@link org.kindling.api.MetricRow}s or a DataFrame), {@link org.kindling.api.EvalResult}.
 */
package org.kindling.api;
