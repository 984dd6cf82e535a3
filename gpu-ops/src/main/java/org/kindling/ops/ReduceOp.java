package org.kindling.ops;

/** Reductions over the last dimension of a tensor. */
public enum ReduceOp { SUM, MEAN, MAX }
