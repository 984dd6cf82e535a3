package org.kindling.ops;

/**
 * Reductions over the last dimension of a tensor. {@code LOG_SUM_EXP} is log Σ exp(x), computed
 * shifted by the row's maximum so large values do not overflow; a row of all −∞ gives −∞.
 */
public enum ReduceOp { SUM, MEAN, MAX, LOG_SUM_EXP }
